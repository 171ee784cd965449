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
from core.timing import Timer, Timing
from methods.base import Decoded, Method, register
from methods.batched import check_batch, left_pad, pad_id
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


class _RowStops(StoppingCriteria):
    """Stops each row of `generate` where its own stop rule ends it (a stop string in its generated text, and, where
    the rows' rules differ, its own EOS ids and max new tokens), checking only the tokens new since the last call."""

    def __init__(self, stops: list[StopRule], prompt_len: int) -> None:
        self.stops, self.prompt_len, self.checked = stops, prompt_len, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        rows = input_ids[:, self.prompt_len :].tolist()
        done = [stop.end(row, self.checked) is not None for stop, row in zip(self.stops, rows, strict=True)]
        self.checked = len(rows[0])
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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


@dataclass
class _Run:
    """One `generate()` call: each row's new tokens, tokens emitted per step, forward counts, the timing."""

    rows: list[list[int]]
    sizes: list[int]
    forwards: int | None  # target forwards (None when compiled: a hook would make transformers recompile)
    draft_forwards: int
    timing: Timing


class _Generate(Method):
    """Shared driver of transformers' `generate()`; subclasses add their keyword arguments."""

    def generate_kwargs(self) -> dict[str, Any]:
        return {}

    def _run(self, prompts: list[list[int]], stops: list[StopRule], timer: Timer) -> _Run:
        """`generate()` on the prompts, left-padded into one batch; each row cut where its own stop rule ends."""
        model = self.target.model
        eos = frozenset.intersection(*(stop.eos_ids for stop in stops))  # generate's own EOS stop: ids every row has
        kwargs = dict(max_new_tokens=max(stop.max_new_tokens for stop in stops), eos_token_id=sorted(eos) or None)
        kwargs |= self.generate_kwargs()
        alike = len({(stop.max_new_tokens, stop.eos_ids) for stop in stops}) == 1
        if not alike or any(stop.stop_strings for stop in stops):  # transformers' stop_strings break assisted
            kwargs["stopping_criteria"] = StoppingCriteriaList([_RowStops(stops, max(map(len, prompts)))])
        if self.sampler is None:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            s = self.sampler
            torch.manual_seed(s.seed)
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        pad = pad_id(self.target.tokenizer, frozenset().union(*(stop.eos_ids for stop in stops)))
        prompt, mask = left_pad(prompts, pad, self.target.device)
        draft = kwargs.get("assistant_model")
        streamer = _MarkingStreamer(timer)
        compiled = "compile_config" in kwargs  # then a forward hook would make transformers recompile every call
        counted = torch.nn.Identity() if compiled else model
        with _ForwardCounter(counted) as target_calls, _ForwardCounter(draft or torch.nn.Identity()) as draft_calls:
            timer.start()
            with torch.inference_mode():
                out = model.generate(prompt, attention_mask=mask, pad_token_id=pad, streamer=streamer, **kwargs)
            timing = timer.read()
        rows = []
        for stop, new in zip(stops, out[:, prompt.shape[1] :].tolist(), strict=True):
            rows.append(new[: stop.end(new, 0) or len(new)])  # generate pads ended rows; keep our rule's length
        forwards = None if compiled else target_calls.count  # compiled: one forward per emitted step
        return _Run(rows, streamer.sizes, forwards, draft_calls.count, timing)

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        run = self._run([prompt_ids], [stop], timer)
        new = run.rows[0]
        accepted, left = [], len(new)
        for size in run.sizes:  # tokens committed per emitted step, cut where our stop rule ends
            if left > 0:
                accepted.append(min(size, left))
                left -= accepted[-1]
        return Decoded(new, accepted, run.timing, draft_forwards=run.draft_forwards, forwards=run.forwards)


@register
class HFGenerate(_Generate):
    name = "hf"
    description = "transformers generate() (greedy or sampling), external reference"
    compilable = True  # --compile: transformers' static cache and its own torch.compile of the forward
    batchable = True  # --batch-size: generate() on the left-padded batch
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

    def generate_batch(self, prompts: list[list[int]], stops: list[StopRule], timer: Timer) -> list[Decoded]:
        """One batched `generate()`: every row gets its own tokens, one per forward, and the batch's timing."""
        check_batch(prompts, stops)
        if self.compile_config is not None and len(prompts) > 1:
            raise BenchError("hf --compile decodes one prompt at a time: drop --batch-size or --compile")
        run = self._run(prompts, stops, timer)
        return [Decoded(tokens, [1] * len(tokens), run.timing) for tokens in run.rows]


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
