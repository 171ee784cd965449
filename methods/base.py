"""The method interface, its result type, and the registry that `bench run --method` looks names up in."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.errors import BenchError
from bench.models import LoadedModel
from bench.timing import Timer, Timing
from methods.decode import Sampler, StopRule


@dataclass
class Decoded:
    """One generation: new token ids (stop token included) and the bookkeeping every metric is derived from."""

    tokens: list[int]
    accepted: list[int]  # tokens committed by each target forward (prefill first); sums to len(tokens)
    timing: Timing
    draft_forwards: int = 0
    forwards: int | None = None  # target forwards when they are not one per `accepted` entry (external methods)
    encode_s: float | None = None  # LLM-to-SLM: seconds the large model spent encoding the prompt (inside ttft)

    @property
    def target_forwards(self) -> int:
        return self.forwards if self.forwards is not None else len(self.accepted)


class Method(ABC):
    """A decoding method bound to a target model. Subclasses declare their options as keyword arguments."""

    name: ClassVar[str]
    description: ClassVar[str]
    lossless: ClassVar[bool] = True  # greedy output must equal autoregressive greedy output

    def __init__(self, target: LoadedModel, sampler: Sampler | None, **options: Any) -> None:
        self.check_options(set(options))
        self.target = target
        self.sampler = sampler

    @classmethod
    def check_options(cls, names: set[str]) -> None:
        """Refuse options this method does not take, before any model is loaded."""
        params = inspect.signature(cls.__init__).parameters
        known = {n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD} - {"self", "target", "sampler"}
        unknown = sorted(names - known)
        if unknown:
            flags = ", ".join("--" + n.replace("_", "-") for n in unknown)
            raise BenchError(f"method {cls.name} does not take {flags}")

    @property
    def output_tokenizer(self) -> Any:
        """The tokenizer of the generated ids (the target's, unless the method generates with another model)."""
        return self.target.tokenizer

    def output_eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids in the output vocabulary."""
        return frozenset(self.target.eos_ids())

    @abstractmethod
    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        """Generate a continuation of `prompt_ids` until `stop` ends it, marking `timer` along the way."""


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    import methods  # noqa: F401  (registers every method module)

    if name not in METHODS:
        raise BenchError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
