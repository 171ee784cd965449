"""`specbench`: Spec-Bench (480 questions, 13 categories in 6 groups), first turns, chat template. Judged by speed
only.

Spec-Bench reports its numbers per group (`evaluation/speed.py`): `mt_bench` is its 8 MT-bench categories, each
other category is a group of its own. A sample's `category` is its group and `subcategory` the question file's
category, so the report's rows are Spec-Bench's columns (its "overall" is the report's `all`). `--subset` takes a
group or a category. Spec-Bench's translation lines are whitespace-tokenized newstest2014; their quality is not
scored here (see `wmt`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from core.options import option
from tasks.base import Sample, Task, TaskOptions, register
from tasks.sources import load_rows

MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
CATEGORIES = MT_BENCH + GROUPS[1:]


def group(category: str) -> str:
    """The Spec-Bench group of a question file category."""
    return GROUPS[0] if category in MT_BENCH else category


def first_of_each_group(rows: list[dict], n: int) -> list[dict]:
    """The first `n` rows of each group, in file order."""
    counts: Counter[str] = Counter()
    out = []
    for row in rows:
        counts[group(row["category"])] += 1
        if counts[group(row["category"])] <= n:
            out.append(row)
    return out


@dataclass(frozen=True)
class SpecBenchOptions(TaskOptions):
    subset: str | None = option(
        None, "specbench: one group (mt_bench = its 8 categories) or one category (all when not given)",
        choices=GROUPS + MT_BENCH,
    )  # fmt: skip
    per_group: int | None = option(None, "specbench: the first N questions of each group (all when not given)", min=1)


@register
class SpecBench(Task):
    name = "specbench"
    description = "Spec-Bench, 480 questions in 6 groups of 13 categories (first turn), chat template, speed only"

    Options = SpecBenchOptions

    def load(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` questions (of the `subset` group or category when one is set; the first `per_group` of
        each group when set), in file order."""
        rows = load_rows(self.name, self.data_dir)
        subset, per_group = self.options.subset, self.options.per_group
        if subset is not None:
            rows = [r for r in rows if subset in (r["category"], group(r["category"]))]
        if per_group is not None:
            rows = first_of_each_group(rows, per_group)
        return [
            Sample(str(r["question_id"]), r["turns"][0],
                   meta={"category": group(r["category"]), "subcategory": r["category"], "turns": r["turns"]})
            for r in rows[:limit]
        ]  # fmt: skip
