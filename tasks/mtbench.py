"""`mtbench`: MT-bench (FastChat layout): two turns, the second conditioned on the model's own first answer,
chat template applied; categories kept for per-category reports. Judged by exactness (no reference score)."""

from __future__ import annotations

from bench.errors import BenchError
from tasks.base import Sample, Task, read_jsonl, register

HUB_ID = "HuggingFaceH4/mt_bench_prompts"


@register
class MTBench(Task):
    name = "mtbench"
    description = "MT-bench, 80 questions x 2 turns in 8 categories, chat template"

    def load(self, limit: int | None = None) -> list[Sample]:
        if self.data_dir is not None:
            rows = read_jsonl(
                self.data_dir / "mt_bench" / "question.jsonl", ("question_id", "category", "turns"), limit
            )
        else:
            rows = _from_hub(limit)
        return [
            Sample(str(r["question_id"]), r["turns"][0], meta={"category": r["category"], "turns": r["turns"]})
            for r in rows
        ]

    def turns(self, sample: Sample) -> list[str]:
        return list(sample.meta["turns"])


def _from_hub(limit: int | None) -> list[dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, split="train")
    except Exception as exc:
        raise BenchError(f"could not load {HUB_ID} from the hub ({type(exc).__name__}); pass --data-dir") from exc
    rows = [{"question_id": r["prompt_id"], "category": r["category"], "turns": r["prompt"]} for r in ds]
    return rows[:limit] if limit is not None else rows
