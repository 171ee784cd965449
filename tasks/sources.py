"""Where each task's data comes from: one declarative table of local files (under the data folder:
`--data-dir`, else `$DECODEBENCH_DATA`; layout in docs/data.md) and their Hugging Face hub equivalents; and the
identity of what was read (`tracing`), which run manifests record."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from core.errors import BenchError
from core.files import file_sha256, read_jsonl


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
    no_hub: str = ""  # without a hub copy: why, and what to use instead (the error when there is no data folder)


def _wmt(year: int) -> Source:
    return Source(
        f"wmt_de_en/newstest{year}.de-en.jsonl", ("id", "src", "ref"), f"wmt/wmt{year % 100}", "de-en",
        columns={"src": "translation.de", "ref": "translation.en"}, streaming=True,
    )  # fmt: skip


def _cnndm(split: str) -> Source:
    return Source(
        f"cnn_dailymail/{split}.jsonl", ("article", "highlights"), "abisee/cnn_dailymail", "3.0.0", split,
        columns={"id": "id", "article": "article", "highlights": "highlights"},
    )  # fmt: skip


WMT_YEARS = (2014, 2015, 2016, 2017, 2018, 2019)
SOURCES: dict[str, Source] = {
    "mtbench": Source(
        "mt_bench/question.jsonl", ("question_id", "category", "turns"), "HuggingFaceH4/mt_bench_prompts",
        split="train", columns={"question_id": "prompt_id", "category": "category", "turns": "prompt"},
    ),
    "specbench": Source("spec_bench/question.jsonl", ("question_id", "category", "turns")),
    "cnndm-specbench80": Source(
        "cnn_dailymail/test_specbench80.jsonl", ("article", "highlights"),
        no_hub="Spec-Bench's 80 CNN/DailyMail articles are in its question file only, not on the hub; pass "
        "--data-dir with cnn_dailymail/test_specbench80.jsonl, or take the hub's full test split (--subset test)",
    ),
    **{f"cnndm-{split}": _cnndm(split) for split in ("test", "validation", "train")},
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


_READ: ContextVar[list[dict[str, Any]] | None] = ContextVar("decodebench_sources_read", default=None)


@contextmanager
def tracing() -> Iterator[list[dict[str, Any]]]:
    """Collect the identity of every source that `load_rows` reads inside the block (each once, in order)."""
    read: list[dict[str, Any]] = []
    token = _READ.set(read)
    try:
        yield read
    finally:
        _READ.reset(token)


def _trace(entry: dict[str, Any]) -> None:
    read = _READ.get()
    if read is not None and entry not in read:
        read.append(entry)


def load_rows(key: str, data_dir: Path | None, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` records of source `key`: from the data folder when there is one, else from the hub.
    Inside `tracing()`, what was read is recorded: the file relative to the data folder and its sha256, or the
    hub dataset, config, split and revision (commit)."""
    source = SOURCES[key]
    if data_dir is not None:
        path = Path(data_dir) / source.local
        if not path.is_file() and source.hub:
            name = " ".join(filter(None, (source.hub, source.config, source.split)))
            raise BenchError(f"data file {path} does not exist (the hub has it: {name}; run without a data folder)")
        rows = read_jsonl(path, source.required, limit)
        _trace({"source": key, "file": source.local, "sha256": file_sha256(path)})
        return rows
    if source.hub is None:
        reason = source.no_hub or f"not on the hub under a stable name; pass --data-dir with {source.local}"
        raise BenchError(f"{key}: {reason}")
    try:
        from datasets import load_dataset_builder

        builder = load_dataset_builder(source.hub, source.config)
        if source.streaming:
            dataset = builder.as_streaming_dataset(split=source.split)
        else:
            builder.download_and_prepare()
            dataset = builder.as_dataset(split=source.split)
        rows = [_columns(source, i, row) for i, row in enumerate(islice(dataset, limit))]
    except Exception as exc:
        name = " ".join(filter(None, (source.hub, source.config, source.split)))
        raise BenchError(f"could not load {name} from the hub ({type(exc).__name__}); pass --data-dir") from exc
    revision = builder.hash if isinstance(builder.hash, str) else None
    _trace({"source": key, "hub": source.hub, "config": source.config, "split": source.split, "revision": revision})
    return rows


def _columns(source: Source, index: int, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(index)}
    for ours, theirs in source.columns.items():
        value: Any = row
        for part in theirs.split("."):
            value = value[part]
        out[ours] = value
    return out
