"""`mtbench`: MT-bench (FastChat layout): two turns, the second conditioned on the model's own first answer,
chat template applied; categories kept for per-category reports. Judged by exactness (no reference score)."""

from __future__ import annotations

from tasks.base import Sample, Task, register
from tasks.sources import load_rows


@register
class MTBench(Task):
    name = "mtbench"
    description = "MT-bench, 80 questions x 2 turns in 8 categories, chat template"

    def load(self, limit: int | None = None) -> list[Sample]:
        return [
            Sample(str(r["question_id"]), r["turns"][0], meta={"category": r["category"], "turns": r["turns"]})
            for r in load_rows(self.name, self.data_dir, limit)
        ]

    def turns(self, sample: Sample) -> list[str]:
        return list(sample.meta["turns"])
