"""The task interface (samples, prompts, stop strings, declared metrics, options) and the task registry."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from core.errors import BenchError
from core.files import DATA_ENV
from core.metrics import Metric
from core.options import Options
from core.registry import Registry
from tasks import chat, sources

__all__ = ["DATA_ENV", "TASKS", "Sample", "Task", "TaskOptions", "encode_prompt", "register", "resolve_data_dir"]


@dataclass
class Sample:
    """One evaluation item: a stable id, the user-facing prompt text, and whatever scoring needs."""

    id: str
    prompt: str
    reference: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskOptions(Options):
    """Options of a task (`--split`, `--subset`, ...); the base has none."""

    kind: ClassVar[str] = "task"


class Task(ABC):
    """A registered evaluation task: loads samples, builds prompts, defines stop strings, declares and scores its
    quality metrics."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    metrics: ClassVar[tuple[Metric, ...]] = ()
    stop_strings: ClassVar[tuple[str, ...]] = ()
    chat_prompts: ClassVar[bool] = True  # False: `prompt_ids` sends raw text (humaneval), no chat template
    template: chat.ChatTemplate | None = None  # the prompt format (None: the tokenizer's own, `hf`)

    def __init__(self, data_dir: str | Path | None = None, options: TaskOptions | None = None) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def load(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` samples (all when None), in a fixed order."""

    def turns(self, sample: Sample) -> list[str]:
        """The user turns of a sample (one for single-turn tasks)."""
        return [sample.prompt]

    def load_traced(self, limit: int | None = None) -> tuple[list[Sample], list[dict[str, Any]]]:
        """`load`, and the identity of every data source it read (`tasks.sources.tracing`)."""
        with sources.tracing() as read:
            samples = self.load(limit)
        return samples, read

    @classmethod
    def check_prompt_format(cls, template: str, system_prompt: str | None) -> None:
        """Raise a `BenchError` for an unknown template, or for any but the default on a raw-text task."""
        if not cls.chat_prompts and (template != chat.HF or system_prompt is not None):
            raise BenchError(f"task {cls.name} sends raw prompts; it takes no --chat-template or --system-prompt")
        chat.check(template, system_prompt)

    def use_template(self, choice: str, tokenizer: Any, system_prompt: str | None = None) -> dict[str, Any]:
        """Format prompts with template `choice` for `tokenizer`; returns what the manifest records of it."""
        self.check_prompt_format(choice, system_prompt)
        raw = chat.ChatTemplate(chat.NONE)
        self.template = chat.load(choice, tokenizer, system_prompt) if self.chat_prompts else raw
        return self.template.describe()

    def prompt_ids(self, sample: Sample, tokenizer: Any, history: list[tuple[str, str]] = ()) -> list[int]:
        """Token ids of the next turn's prompt after `history` ((user, model answer) pairs), in the task's
        template (`use_template`; by default the tokenizer's own chat template, or plain text without one)."""
        return encode_prompt(tokenizer, self.turns(sample)[len(history)], history, self.template)

    def score(self, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """The declared metrics over the outputs: the mean of `score_sample` (tasks with corpus metrics override)."""
        if not samples or not self.metrics:
            return {}
        per_sample = [self.score_sample(s, o) for s, o in zip(samples, outputs, strict=True)]
        return {m.name: sum(p[m.name] for p in per_sample) / len(per_sample) for m in self.metrics}

    def score_sample(self, sample: Sample, output: str) -> dict[str, float]:
        """The "mean" metrics of one output."""
        raise NotImplementedError(f"task {self.name} declares metrics but scores no sample")


TASKS: Registry[Task] = Registry("task", "tasks", "decodebench.tasks")
register = TASKS.register


def encode_prompt(
    tokenizer: Any, text: str, history: list[tuple[str, str]] = (), template: chat.ChatTemplate | None = None
) -> list[int]:
    """Encode a user turn (after earlier (user, assistant) turns) in `template` (None: the tokenizer's own chat
    template, or plain text when it has none)."""
    return (template or chat.load(chat.HF, tokenizer)).encode(tokenizer, text, history)


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
