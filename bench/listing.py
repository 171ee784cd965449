"""What `bench list methods|tasks|templates` prints: each entry's description, its options with their defaults,
(tasks) the quality metrics it declares, and the prompt formats `--chat-template` takes."""

from __future__ import annotations

from core.options import Options
from methods.base import METHODS
from tasks import chat
from tasks.base import TASKS


def _options(schema: type[Options]) -> str:
    specs = schema.specs()
    return "; options: " + ", ".join(f"{s.flag} {s.default}" for s in specs) if specs else ""


def methods() -> list[tuple[str, str]]:
    rows = []
    for name, cls in METHODS:
        draft = "; needs --draft" if cls.uses_draft else ""
        rows.append((name, cls.description + draft + _options(cls.Options)))
    return rows


def tasks() -> list[tuple[str, str]]:
    rows = []
    for name, cls in TASKS:
        metrics = ", ".join(f"{m.name} ({'higher' if m.higher_is_better else 'lower'} is better)" for m in cls.metrics)
        rows.append((name, cls.description + (f"; metrics: {metrics}" if metrics else "") + _options(cls.Options)))
    return rows


def templates() -> list[tuple[str, str]]:
    rows = [(chat.HF, "the tokenizer's own chat template (plain text, recorded as none, when it has none)"),
            (chat.NONE, "plain text: earlier turns and answers joined by newlines")]  # fmt: skip
    return rows + [(name, chat.describe(name)) for name in chat.shipped()] + [("FILE.jinja", "a template file")]
