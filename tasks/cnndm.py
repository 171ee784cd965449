"""`cnndm`: CNN/DailyMail summarization, scored with ROUGE-1/2/L/Lsum F-measure (rouge-score, stemming).

`--subset` names the articles, the same from a data folder or the hub: `specbench80` (default) is Spec-Bench's 80
test articles (its `summarization` category; a data-folder file only, the hub has no copy), `test` the full test
split (11,490 articles: `cnn_dailymail/test.jsonl`, or the hub's `abisee/cnn_dailymail` 3.0.0 test).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from core.metrics import Metric
from core.options import option
from tasks.base import Sample, Task, TaskOptions, register
from tasks.sources import load_rows

TEMPLATE = "Summarize: {article}"  # Spec-Bench's summarization prompt
ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SUBSETS = ("specbench80", "test")  # the evaluation articles (`bench train` refuses them)


@dataclass(frozen=True)
class CNNDailyMailOptions(TaskOptions):
    subset: str = option(
        SUBSETS[0], "cnndm: specbench80 (Spec-Bench's 80 test articles) or test (the full test split)", choices=SUBSETS
    )


@register
class CNNDailyMail(Task):
    name = "cnndm"
    description = "CNN/DailyMail summarization (Spec-Bench's 80 test articles, or --subset test), ROUGE-1/2/L/Lsum"
    Options = CNNDailyMailOptions
    metrics = tuple(Metric(k, f"{k} F-measure x 100 (rouge-score, stemming)") for k in ROUGE)

    def load(self, limit: int | None = None) -> list[Sample]:
        rows = load_rows(f"cnndm-{self.options.subset}", self.data_dir, limit)
        return [
            Sample(str(r.get("id", i)), TEMPLATE.format(article=r["article"]), reference=r["highlights"])
            for i, r in enumerate(rows)
        ]

    def score_sample(self, sample: Sample, output: str) -> dict[str, float]:
        scores = _scorer().score(_sentence_lines(sample.reference), _sentence_lines(output))
        return {k: 100 * scores[k].fmeasure for k in ROUGE}


@functools.cache
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)


def _sentence_lines(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)
