"""`cnndm`: CNN/DailyMail summarization, scored with ROUGE-1/2/L/Lsum F-measure (rouge-score, stemming)."""

from __future__ import annotations

import re

from bench.errors import BenchError
from tasks.base import Sample, Task, read_jsonl, register

TEMPLATE = "Summarize: {article}"  # Spec-Bench's summarization prompt


@register
class CNNDailyMail(Task):
    name = "cnndm"
    description = "CNN/DailyMail summarization (test), ROUGE-1/2/L/Lsum"

    def load(self, limit: int | None = None) -> list[Sample]:
        if self.data_dir is not None:
            rows = read_jsonl(
                self.data_dir / "cnn_dailymail" / "test_specbench80.jsonl", ("article", "highlights"), limit
            )
        else:
            rows = _from_hub(limit)
        return [
            Sample(str(r.get("id", i)), TEMPLATE.format(article=r["article"]), reference=r["highlights"])
            for i, r in enumerate(rows)
        ]

    def score(self, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
        totals = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
        for sample, output in zip(samples, outputs, strict=True):
            scores = scorer.score(_sentence_lines(sample.reference), _sentence_lines(output))
            for k in totals:
                totals[k] += scores[k].fmeasure
        return {k: 100 * v / len(samples) for k, v in totals.items()} if samples else {}


def _sentence_lines(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def _from_hub(limit: int | None) -> list[dict]:
    try:
        from datasets import load_dataset

        split = "test" if limit is None else f"test[:{limit}]"
        ds = load_dataset("cnn_dailymail", "3.0.0", split=split)
    except Exception as exc:
        raise BenchError(
            f"could not load cnn_dailymail 3.0.0 from the hub ({type(exc).__name__}); pass --data-dir"
        ) from exc
    return [{"id": r["id"], "article": r["article"], "highlights": r["highlights"]} for r in ds]
