"""Option schemas: a frozen dataclass per method and per task, validated in one place, resolved with defaults.

    @dataclass(frozen=True)
    class LookaheadOptions(Options):
        window: int = option(5, "Jacobi window size W", flags=("-W",), min=1)

The resolved options (defaults included) go into the run's identity, its manifest and every settings label; the
command line builds its flags from the same fields, and sweeps validate grid keys against them before loading.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, Union, get_args, get_origin, get_type_hints

from core.errors import BenchError


def option(
    default: Any,
    help: str,
    *,
    flags: tuple[str, ...] = (),
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    label: str | None = None,
) -> Any:
    """A field of an options dataclass: its default, help text, extra flags (e.g. "-W"), bounds and choices;
    `label` is its short name in settings labels (the papers' "W", "k")."""
    meta = {"help": help, "flags": flags, "min": min, "max": max, "choices": choices, "label": label}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Spec:
    """One option as the command line, listings and validation see it."""

    name: str
    type: type
    optional: bool
    default: Any
    help: str
    flags: tuple[str, ...]
    min: float | None
    max: float | None
    choices: tuple[str, ...] | None
    label: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Options:
    """Base of every options schema (no options). Subclasses add `option(...)` fields and may override `check`."""

    kind: ClassVar[str] = "method"

    @classmethod
    def specs(cls) -> list[Spec]:
        hints = get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            base, optional = _unwrap(hints[f.name])
            m = f.metadata
            out.append(Spec(f.name, base, optional, f.default, m.get("help", ""), m.get("flags", ()), m.get("min"),
                            m.get("max"), m.get("choices"), m.get("label") or f.name))  # fmt: skip
        return out

    @classmethod
    def resolve(cls, given: dict[str, Any], owner: str) -> Self:
        """Options from the values given (by name), defaults for the rest; unknown names, wrong types and values
        out of range are a `BenchError` that names the flag."""
        specs = {s.name: s for s in cls.specs()}
        unknown = sorted(set(given) - set(specs))
        if unknown:
            flags = ", ".join("--" + n.replace("_", "-") for n in unknown)
            raise BenchError(f"{cls.kind} {owner} does not take {flags}")
        values = {name: _checked(specs[name], value) for name, value in given.items()}
        options = cls(**values)
        options.check(owner)
        return options

    def check(self, owner: str) -> None:
        """Checks across fields (override where needed)."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def unread(cls, values: dict[str, Any]) -> set[str]:
        """Options these values make irrelevant (left out of settings labels), e.g. a tree's shape for a chain."""
        return set()


def _unwrap(hint: Any) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of `int`, `int | None`, `Optional[str]` ..."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(get_args(hint))
    return hint, False


def _checked(spec: Spec, value: Any) -> Any:
    if value is None and spec.optional:
        return None
    ok = isinstance(value, spec.type) and not (spec.type is not bool and isinstance(value, bool))
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise BenchError(f"{spec.flag} must be {spec.type.__name__} (got {value!r})")
    if spec.min is not None and value < spec.min:
        raise BenchError(f"{spec.flag} must be at least {spec.min} (got {value})")
    if spec.max is not None and value > spec.max:
        raise BenchError(f"{spec.flag} must be at most {spec.max} (got {value})")
    if spec.choices is not None and value not in spec.choices:
        raise BenchError(f"{spec.flag} must be one of {', '.join(spec.choices)} (got {value!r})")
    return value
