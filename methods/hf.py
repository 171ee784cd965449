"""External references from transformers, on the same model, prompts and timer as ours:
`hf` (plain `generate()`), `hf-assisted` (assisted generation with a draft model) and `hf-pld`
(`prompt_lookup_num_tokens`). Target and draft forwards are counted with forward hooks.

Like for like by default: `hf-pld` has `pld`'s defaults (the reference's max_ngram 3, 10 candidates) and
`hf-assisted` drafts a constant k tokens (speculative's k=5) without transformers' confidence early exit
(`--schedule transformers` for transformers' own policy). Nothing of a run stays in the models' configs."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from core.errors import BenchError
from core.options import Options, option
from core.timing import Timer
from methods.base import Decoded, Method, register
from methods.decode import StopRule
from methods.pld import PromptLookupOptions


class _MarkingStreamer(BaseStreamer):
    """Marks the timer each time `generate` emits tokens (the first call carries the prompt)."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.calls = 0
        self.sizes: list[int] = []  # tokens emitted per call after the prompt

    def put(self, value: torch.Tensor) -> None:
        if self.calls:
            self.timer.mark()
            self.sizes.append(value.numel())
        self.calls += 1

    def end(self) -> None:
        pass


class _StopStrings(StoppingCriteria):
    """Stops `generate` where our stop rule would (a stop string in the generated text)."""

    def __init__(self, stop: StopRule, prompt_len: int) -> None:
        self.stop, self.prompt_len = stop, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[0, self.prompt_len :].tolist()
        done = any(s in self.stop.tokenizer.decode(new) for s in self.stop.stop_strings)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class _ForwardCounter:
    """Counts a module's forward calls while active."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.count = module, 0

    def __enter__(self) -> _ForwardCounter:
        self.handle = self.module.register_forward_hook(self._hook)
        return self

    def _hook(self, *args: Any) -> None:
        self.count += 1

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


class _Generate(Method):
    """Shared driver of transformers' `generate()`; subclasses add their keyword arguments."""

    def generate_kwargs(self) -> dict[str, Any]:
        return {}

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        model, tokenizer = self.target.model, self.target.tokenizer
        kwargs = dict(max_new_tokens=stop.max_new_tokens, eos_token_id=sorted(stop.eos_ids) or None)
        kwargs |= self.generate_kwargs()
        if stop.stop_strings:  # our own criterion: transformers' stop_strings break assisted generation
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopStrings(stop, len(prompt_ids))])
        if self.sampler is None:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            s = self.sampler
            torch.manual_seed(s.seed)
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        prompt = torch.tensor([prompt_ids], device=self.target.device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop.eos_ids, default=0)
        draft = kwargs.get("assistant_model")
        streamer = _MarkingStreamer(timer)
        compiled = "compile_config" in kwargs  # then a forward hook would make transformers recompile every call
        counted = torch.nn.Identity() if compiled else model
        with _ForwardCounter(counted) as target_calls, _ForwardCounter(draft or torch.nn.Identity()) as draft_calls:
            timer.start()
            with torch.inference_mode():
                out = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    pad_token_id=pad,
                    streamer=streamer,
                    **kwargs,
                )
            timing = timer.read()
        new = out[0, len(prompt_ids) :].tolist()
        new = new[: stop.end(new, 0) or len(new)]  # generate pads finished rows; keep our stop rule's length
        accepted, left = [], len(new)
        for size in streamer.sizes:  # tokens committed per emitted step, cut where our stop rule ends
            if left > 0:
                accepted.append(min(size, left))
                left -= accepted[-1]
        forwards = None if compiled else target_calls.count  # compiled: one forward per emitted step
        return Decoded(new, accepted, timing, draft_forwards=draft_calls.count, forwards=forwards)


@register
class HFGenerate(_Generate):
    name = "hf"
    description = "transformers generate() (greedy or sampling), external reference"
    compilable = True  # --compile: transformers' static cache and its own torch.compile of the forward
    compile_config: CompileConfig | None = None

    def use_compiled(self, compiled: Any) -> None:
        super().use_compiled(compiled)
        config = CompileConfig(mode="reduce-overhead" if self.target.device.type == "cuda" else "default")
        config._compile_all_devices = True  # transformers compiles on GPUs only unless told
        self.compile_config = config

    def generate_kwargs(self) -> dict[str, Any]:
        if self.compile_config is None:
            return {}
        return {"cache_implementation": "static", "compile_config": self.compile_config}

    def warm_up_compiled(self, prompt_ids: list[int]) -> float:
        """transformers compiles at the first decoding step of a static-cache `generate()`, and again (with the cache
        length dynamic) once a later call needs a longer cache: two untimed generations, the second longer."""
        start = time.perf_counter()
        for new_tokens in (8, 24):
            self.generate(prompt_ids, StopRule(new_tokens), Timer(self.target.device))
        return time.perf_counter() - start


ASSISTED_SCHEDULES = ("constant", "transformers")


@dataclass(frozen=True)
class AssistedOptions(Options):
    num_draft: int = option(5, "draft tokens per step (k), speculative's default", min=1, label="k")
    schedule: str = option(
        "constant",
        "draft-length policy: constant = k draft tokens every step, no early exit (speculative's policy); "
        "transformers = transformers' own policy as the draft's generation_config sets it, starting from k tokens "
        "(defaults: num_assistant_tokens_schedule constant, and the draft stops early when its top probability "
        "falls under assistant_confidence_threshold 0.4, re-fitted on an ROC curve if scikit-learn is installed)",
        choices=ASSISTED_SCHEDULES,
    )


@register
class HFAssisted(_Generate):
    name = "hf-assisted"
    description = "transformers assisted generation with a draft model (external reference for speculative)"
    family = "draft model"
    Options = AssistedOptions
    uses_draft = True

    def generate_kwargs(self) -> dict[str, Any]:
        return {"assistant_model": self.draft.model}

    def assistant_config(self, config: GenerationConfig) -> GenerationConfig:
        """A copy of the draft's generation config with this run's draft-length policy. transformers reads
        num_assistant_tokens, its schedule and assistant_confidence_threshold from the ASSISTANT's generation
        config (`AssistedCandidateGenerator` deep-copies it), not from `generate()`'s arguments."""
        config = copy.deepcopy(config)
        config.num_assistant_tokens = self.options.num_draft
        if self.options.schedule == "constant":
            config.num_assistant_tokens_schedule = "constant"
            config.assistant_confidence_threshold = 0.0  # None would be filled with transformers' default 0.4
        return config

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        # transformers writes back to the assistant's generation config (num_assistant_tokens after a "heuristic"
        # schedule), so the draft runs with a copy and gets its own object back, whatever happens
        model = self.draft.model
        original = model.generation_config
        model.generation_config = self.assistant_config(original)
        try:
            return super().generate(prompt_ids, stop, timer)
        finally:
            model.generation_config = original


@dataclass(frozen=True)
class HFPromptLookupOptions(PromptLookupOptions):
    """`pld`'s options and defaults, so the two compare like for like; transformers' match rule is fixed."""

    def check(self, owner: str) -> None:
        if self.match != "earliest":
            raise BenchError(f"--match must be one of earliest for {owner}, transformers' rule (got {self.match!r})")
        if self.budget != "fixed":
            raise BenchError(f"--budget must be fixed for {owner}: transformers drafts a fixed length")


@register
class HFPromptLookup(_Generate):
    name = "hf-pld"
    description = "transformers prompt_lookup_num_tokens (external reference for pld)"
    family = "prompt lookup"
    Options = HFPromptLookupOptions

    def generate_kwargs(self) -> dict[str, Any]:
        o = self.options
        return {"prompt_lookup_num_tokens": o.num_candidates, "max_matching_ngram_size": o.max_ngram}
