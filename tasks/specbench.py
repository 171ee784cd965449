"""`specbench`: Spec-Bench (480 questions, 13 categories), first turns, chat template. Judged by speed only.

Spec-Bench's translation lines are whitespace-tokenized newstest2014; its quality is not scored here (see `wmt`).
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError
from tasks.base import Sample, Task, read_jsonl, register

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


@register
class SpecBench(Task):
    name = "specbench"
    description = "Spec-Bench, 480 questions in 13 categories (first turn), chat template, speed only"

    def __init__(self, data_dir: str | Path | None = None, subset: str | None = None) -> None:
        """`subset`: one of the 13 categories (all when None)."""
        super().__init__(data_dir)
        category = subset
        if category is not None and category not in CATEGORIES:
            raise BenchError(f"unknown Spec-Bench category {category!r}; valid: {', '.join(CATEGORIES)}")
        self.category = category

    def load(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` questions (of `category` when one is set), in file order."""
        if self.data_dir is None:
            raise BenchError(
                "Spec-Bench is not on the Hugging Face hub under a stable name; pass --data-dir with "
                "spec_bench/question.jsonl (from hemingkx/Spec-Bench data/spec_bench/question.jsonl)"
            )
        rows = read_jsonl(self.data_dir / "spec_bench" / "question.jsonl", ("question_id", "category", "turns"))
        if self.category is not None:
            rows = [r for r in rows if r["category"] == self.category]
        return [
            Sample(str(r["question_id"]), r["turns"][0], meta={"category": r["category"], "turns": r["turns"]})
            for r in rows[:limit]
        ]
