"""What `bench list methods|tasks` prints: each entry's description, its options with their defaults, and (tasks)
the quality metrics it declares."""

from __future__ import annotations

from core.options import Options
from methods.base import METHODS
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
