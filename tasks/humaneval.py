"""`humaneval`: OpenAI HumanEval code completion (164 problems). Completions stop at the usual sequences."""

from __future__ import annotations

import gzip
import json

from bench.errors import BenchError
from tasks.base import Sample, Task, register

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


@register
class HumanEval(Task):
    name = "humaneval"
    description = "HumanEval code completion (164 problems), plain prompt, stop sequences"
    stop_strings = STOP

    def load(self, limit: int | None = None) -> list[Sample]:
        rows = self._local(limit) if self.data_dir is not None else _from_hub(limit)
        return [
            Sample(r["task_id"], r["prompt"], reference=r["canonical_solution"],
                   meta={"test": r["test"], "entry_point": r["entry_point"]})
            for r in rows
        ]  # fmt: skip

    def prompt_ids(self, sample: Sample, tokenizer) -> list[int]:
        return tokenizer(sample.prompt)["input_ids"]  # code completion: the raw prompt, no chat template

    def _local(self, limit: int | None) -> list[dict]:
        path = self.data_dir / "humaneval" / "HumanEval.jsonl.gz"
        if not path.is_file():
            raise BenchError(f"data file {path} does not exist")
        rows = []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                try:
                    row = json.loads(line)
                except ValueError:
                    raise BenchError(f"{path}: line {number} is not valid JSON") from None
                missing = [
                    k for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution") if k not in row
                ]
                if missing:
                    raise BenchError(f"{path}: line {number} lacks field(s) {', '.join(missing)}")
                rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
        return rows


def _from_hub(limit: int | None) -> list[dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset("openai_humaneval", split="test")
    except Exception as exc:
        raise BenchError(
            f"could not load openai_humaneval from the hub ({type(exc).__name__}); pass --data-dir"
        ) from exc
    rows = [dict(r) for r in ds]
    return rows[:limit] if limit is not None else rows
