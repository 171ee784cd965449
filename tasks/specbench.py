"""`specbench`: Spec-Bench (480 questions, 13 categories), first turns, chat template. Judged by speed only.

Spec-Bench's translation lines are whitespace-tokenized newstest2014; its quality is not scored here (see `wmt`).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.options import option
from tasks.base import Sample, Task, TaskOptions, register
from tasks.sources import load_rows

CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
    "translation",
    "summarization",
    "qa",
    "math_reasoning",
    "rag",
)


@dataclass(frozen=True)
class SpecBenchOptions(TaskOptions):
    subset: str | None = option(None, "specbench: one category (all when not given)", choices=CATEGORIES)


@register
class SpecBench(Task):
    name = "specbench"
    description = "Spec-Bench, 480 questions in 13 categories (first turn), chat template, speed only"

    Options = SpecBenchOptions

    def load(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` questions (of `category` when one is set), in file order."""
        rows = load_rows(self.name, self.data_dir)
        if self.options.subset is not None:
            rows = [r for r in rows if r["category"] == self.options.subset]
        return [
            Sample(str(r["question_id"]), r["turns"][0], meta={"category": r["category"], "turns": r["turns"]})
            for r in rows[:limit]
        ]
