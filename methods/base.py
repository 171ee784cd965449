"""The method interface, its result type, the base of every method built on the decode engine, and the method
registry that `bench run --method` looks names up in."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options
from core.registry import Registry
from core.timing import Timer, Timing
from methods.decode import Drafter, Sampler, StopRule, verify_loop


@dataclass
class Decoded:
    """One generation: new token ids (stop token included) and the bookkeeping every metric is derived from."""

    tokens: list[int]
    accepted: list[int]  # tokens committed by each target forward (the prompt's first); sums to len(tokens)
    timing: Timing
    draft_forwards: int = 0
    forwards: int | None = None  # target forwards when they are not one per `accepted` entry (external methods)
    encode_s: float | None = None  # LLM-to-SLM: seconds the large model spent encoding the prompt (inside ttft)
    drafted: list[int] | None = None  # per target forward: draft tokens it could accept (None: not known)
    step_tokens: list[int] | None = None  # per target forward: query tokens it ran (None: not known)
    budget: list[int] | None = None  # per target forward: the draft length `--budget auto` chose (None: fixed)

    @property
    def target_forwards(self) -> int:
        return self.forwards if self.forwards is not None else len(self.accepted)


class Method(ABC):
    """A decoding method bound to a target model, with its resolved options (an `Options` dataclass)."""

    name: ClassVar[str]
    description: ClassVar[str]
    family: ClassVar[str] = ""  # groups methods that share options (the `bench run --help` panel); default: name
    Options: ClassVar[type[Options]] = Options
    lossless: ClassVar[bool] = True  # greedy output must equal autoregressive greedy output
    uses_draft: ClassVar[bool] = False  # needs a draft model (`--draft`)
    encoder_decoder_target: ClassVar[bool] = False  # takes an encoder-decoder target (T5); the others decode only
    compilable: ClassVar[bool] = False  # runs compiled with `--compile` (`use_compiled`)
    quantizable: ClassVar[bool] = True  # runs on a `--quant` copy of the target (its LM head may be quantized)
    batchable: ClassVar[bool] = False  # decodes several prompts at once (`--batch-size`, `generate_batch`)
    compares_text: ClassVar[bool] = False  # its tokens are another engine's: exactness compares texts (llama.cpp)

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: Options | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        self.target = target
        self.sampler = sampler
        self.options = options if options is not None else self.Options()
        self.draft = draft
        if target.model.config.is_encoder_decoder and not self.encoder_decoder_target:
            spec = target.artifact.get("spec", "the model")
            raise BenchError(f"method {self.name} needs a decoder-only model; {spec} is an encoder-decoder model "
                             "(llm2slm reads one as its LLM, with --no-baseline)")  # fmt: skip
        if self.uses_draft and draft is None:
            raise BenchError(f"{self.name} needs a draft model: --draft PRESET|HF-ID|PATH")
        self.compiled: Any = None  # `--compile`: the target's methods.compiled.CompiledModel

    def use_compiled(self, compiled: Any) -> None:
        """Run compiled from now on (`--compile`): `compiled` is the target's methods.compiled.CompiledModel."""
        if not self.compilable:
            raise BenchError(f"method {self.name} does not support --compile")
        self.compiled = compiled

    def warm_up_compiled(self, prompt_ids: list[int]) -> float:
        """Compile, before timing, every graph this method's generations run; returns the seconds it took."""
        return self.compiled.warm_up(self.max_step_tokens() or self.compiled.buckets[-1])

    def max_step_tokens(self) -> int | None:
        """The most query tokens a forward after the prompt runs (the pending token and the draft, Lookahead's
        window included): `--compile` compiles the buckets up to it before timing. None: unknown (every bucket)."""
        return None

    @classmethod
    def create(cls, target: LoadedModel, sampler: Sampler | None = None, options: dict[str, Any] | None = None,
               draft: LoadedModel | None = None) -> Method:  # fmt: skip
        """An instance with its options given by name, resolved against the method's schema."""
        return cls(target, sampler, cls.Options.resolve(options or {}, cls.name), draft)

    @classmethod
    def default_model(cls, options: Options) -> str | None:
        """The target model these options imply when `--model` is not given (None: the harness default)."""
        return None

    @property
    def output_tokenizer(self) -> Any:
        """The tokenizer of the generated ids (the target's, unless the method generates with another model)."""
        return self.target.tokenizer

    def manifest(self) -> dict[str, Any]:
        """What the run's manifest records about the method's own inputs (e.g. REST's datastore); {}: nothing."""
        return {}

    def end_warm_up(self) -> None:
        """Called after the untimed warm-up generations: drop state they left that would favour the timed ones
        (state a paper's reference keeps across its warm-up too, e.g. Token Recycling's matrix, stays)."""
        return None

    def output_eos_ids(self) -> frozenset[int]:
        """End-of-sequence ids in the output vocabulary."""
        return frozenset(self.target.eos_ids())

    @abstractmethod
    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        """Generate a continuation of `prompt_ids` until `stop` ends it, marking `timer` along the way."""

    def generate_batch(self, prompts: list[list[int]], stops: list[StopRule], timer: Timer) -> list[Decoded]:
        """Decode several prompts at once (`batchable` methods): one `Decoded` per prompt, in order, each with its
        own tokens (cut by its own stop rule) and the batch's shared timing (marks after each batched forward)."""
        raise BenchError(f"method {self.name} decodes one prompt at a time: drop --batch-size")


class DraftingMethod(Method):
    """A method on the shared engine (`methods.decode.verify_loop`): a subclass gives its options and a drafter."""

    compilable = True

    @abstractmethod
    def drafter(self) -> Drafter | None:
        """A fresh drafter for one generation (None: autoregressive decoding)."""

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        drafter = self.drafter()
        target = self.compiled.target() if self.compiled is not None else None
        result = verify_loop(self.target.model, prompt_ids, stop, timer, drafter, self.sampler, target)
        forwards = drafter.draft_forwards if drafter is not None else 0
        drafted = result.drafted if drafter is not None else None
        return Decoded(
            result.tokens,
            result.accepted,
            timer.read(),
            draft_forwards=forwards,
            drafted=drafted,
            step_tokens=result.step_tokens,
            budget=getattr(drafter, "chosen", None),
        )


METHODS: Registry[Method] = Registry("method", "methods", "decodebench.methods")
register = METHODS.register
