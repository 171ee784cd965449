"""Where each task's data comes from: one declarative table of local files (under the data folder:
`--data-dir`, else `$DECODEBENCH_DATA`; layout in docs/data.md) and their Hugging Face hub equivalents."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from core.errors import BenchError
from core.files import read_jsonl


@dataclass(frozen=True)
class Source:
    """A data file under the data folder and, where one exists, the hub dataset with the same records.

    `columns` maps our field names to the hub's columns ("a.b" reads a nested field); a missing `id` column
    becomes the record's index. `streaming` reads the hub split lazily (big datasets)."""

    local: str
    required: tuple[str, ...]
    hub: str | None = None
    config: str | None = None
    split: str = "test"
    columns: dict[str, str] = field(default_factory=dict)
    streaming: bool = False


def _wmt(year: int) -> Source:
    return Source(
        f"wmt_de_en/newstest{year}.de-en.jsonl", ("id", "src", "ref"), f"wmt/wmt{year % 100}", "de-en",
        columns={"src": "translation.de", "ref": "translation.en"}, streaming=True,
    )  # fmt: skip


WMT_YEARS = (2014, 2015, 2016, 2017, 2018, 2019)
SOURCES: dict[str, Source] = {
    "mtbench": Source(
        "mt_bench/question.jsonl", ("question_id", "category", "turns"), "HuggingFaceH4/mt_bench_prompts",
        split="train", columns={"question_id": "prompt_id", "category": "category", "turns": "prompt"},
    ),
    "specbench": Source("spec_bench/question.jsonl", ("question_id", "category", "turns")),
    "cnndm": Source(
        "cnn_dailymail/test_specbench80.jsonl", ("article", "highlights"), "cnn_dailymail", "3.0.0",
        columns={"id": "id", "article": "article", "highlights": "highlights"},
    ),
    "cnndm-validation": Source(
        "cnn_dailymail/validation.jsonl", ("article", "highlights"), "cnn_dailymail", "3.0.0", "validation",
        columns={"id": "id", "article": "article", "highlights": "highlights"},
    ),
    "cnndm-train": Source(
        "cnn_dailymail/train.jsonl", ("article", "highlights"), "cnn_dailymail", "3.0.0", "train",
        columns={"id": "id", "article": "article", "highlights": "highlights"},
    ),
    "gsm8k": Source(
        "gsm8k/test.jsonl", ("question", "answer"), "openai/gsm8k", "main",
        columns={"question": "question", "answer": "answer"},
    ),
    "humaneval": Source(
        "humaneval/HumanEval.jsonl.gz", ("task_id", "prompt", "test", "entry_point", "canonical_solution"),
        "openai_humaneval",
        columns={k: k for k in ("task_id", "prompt", "test", "entry_point", "canonical_solution")},
    ),
    **{f"wmt{year}": _wmt(year) for year in WMT_YEARS},
}  # fmt: skip


def load_rows(key: str, data_dir: Path | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` records of source `key`: from the data folder when there is one, else from the hub."""
    source = SOURCES[key]
    if data_dir is not None:
        return read_jsonl(Path(data_dir) / source.local, source.required, limit)
    if source.hub is None:
        raise BenchError(f"{key} is not on the hub under a stable name; pass --data-dir with {source.local}")
    try:
        from datasets import load_dataset

        rows = load_dataset(source.hub, source.config, split=source.split, streaming=source.streaming)
        return [_columns(source, i, row) for i, row in enumerate(islice(rows, limit))]
    except Exception as exc:
        name = " ".join(filter(None, (source.hub, source.config, source.split)))
        raise BenchError(f"could not load {name} from the hub ({type(exc).__name__}); pass --data-dir") from exc


def _columns(source: Source, index: int, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(index)}
    for ours, theirs in source.columns.items():
        value: Any = row
        for part in theirs.split("."):
            value = value[part]
        out[ours] = value
    return out
