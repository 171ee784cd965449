"""The task interface, data-folder resolution and the registry that `bench run --task` looks names up in."""

from __future__ import annotations

import gzip
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bench.errors import BenchError

DATA_ENV = "DECODEBENCH_DATA"


@dataclass
class Sample:
    """One evaluation item: a stable id, the user-facing prompt text, and whatever scoring needs."""

    id: str
    prompt: str
    reference: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """A registered evaluation task: loads samples, builds prompts, defines stop strings, scores outputs."""

    name: ClassVar[str]
    description: ClassVar[str]
    stop_strings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = resolve_data_dir(data_dir)

    @abstractmethod
    def load(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` samples (all when None), in a fixed order."""

    def turns(self, sample: Sample) -> list[str]:
        """The user turns of a sample (one for single-turn tasks)."""
        return [sample.prompt]

    def prompt_ids(self, sample: Sample, tokenizer: Any, history: list[tuple[str, str]] = ()) -> list[int]:
        """Token ids of the next turn's prompt after `history` ((user, model answer) pairs): the chat template
        where the tokenizer has one, plain text otherwise."""
        return encode_prompt(tokenizer, self.turns(sample)[len(history)], history)

    def score(self, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """Quality metrics over the outputs (empty for tasks judged only by exactness)."""
        return {}


def encode_prompt(tokenizer: Any, text: str, history: list[tuple[str, str]] = ()) -> list[int]:
    """Encode a user turn (after earlier (user, assistant) turns) with the chat template, or as plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for user, assistant in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    plain = "".join(f"{u}\n{a}\n\n" for u, a in history) + text
    return tokenizer(plain)["input_ids"]


def resolve_data_dir(explicit: str | Path | None) -> Path | None:
    """--data-dir, else $DECODEBENCH_DATA, else None (the hub, through `datasets`)."""
    chosen = explicit or os.environ.get(DATA_ENV)
    if not chosen:
        return None
    path = Path(chosen)
    if not path.is_dir():
        source = "--data-dir" if explicit else f"${DATA_ENV}"
        raise BenchError(f"data folder {path} (from {source}) does not exist")
    return path


def read_jsonl(path: Path, required: tuple[str, ...], limit: int | None = None) -> list[dict[str, Any]]:
    """Read records from a jsonl (or jsonl.gz) file, checking each has the required fields; errors name file
    and line."""
    if not path.is_file():
        raise BenchError(f"data file {path} does not exist")
    records = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise BenchError(f"{path}: line {number} is not valid JSON") from None
            missing = [k for k in required if not isinstance(record, dict) or k not in record]
            if missing:
                raise BenchError(f"{path}: line {number} lacks field(s) {', '.join(missing)}")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


def get_task(name: str) -> type[Task]:
    import tasks  # noqa: F401  (registers every task module)

    if name not in TASKS:
        raise BenchError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
