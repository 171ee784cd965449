"""`cnndm`: CNN/DailyMail summarization, scored with ROUGE-1/2/L/Lsum F-measure (rouge-score, stemming)."""

from __future__ import annotations

import functools
import re

from core.metrics import Metric
from tasks.base import Sample, Task, register
from tasks.sources import load_rows

TEMPLATE = "Summarize: {article}"  # Spec-Bench's summarization prompt
ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@register
class CNNDailyMail(Task):
    name = "cnndm"
    description = "CNN/DailyMail summarization (test), ROUGE-1/2/L/Lsum"
    metrics = tuple(Metric(k, f"{k} F-measure x 100 (rouge-score, stemming)") for k in ROUGE)

    def load(self, limit: int | None = None) -> list[Sample]:
        rows = load_rows(self.name, self.data_dir, limit)
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
