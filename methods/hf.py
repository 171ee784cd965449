"""External references from transformers, on the same model, prompts and timer as ours:
`hf` (plain `generate()`), `hf-assisted` (assisted generation with a draft model) and `hf-pld`
(`prompt_lookup_num_tokens`). Target and draft forwards are counted with forward hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from core.options import Options, option
from core.timing import Timer
from methods.base import Decoded, Method, register
from methods.decode import StopRule


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
        with _ForwardCounter(model) as target_calls, _ForwardCounter(draft or torch.nn.Identity()) as draft_calls:
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
        return Decoded(new, accepted, timing, draft_forwards=draft_calls.count, forwards=target_calls.count)


@register
class HFGenerate(_Generate):
    name = "hf"
    description = "transformers generate() (greedy or sampling), external reference"


@dataclass(frozen=True)
class AssistedOptions(Options):
    num_draft: int | None = option(None, "draft tokens per step (None: transformers' schedule)", min=1, label="k")


@register
class HFAssisted(_Generate):
    name = "hf-assisted"
    description = "transformers assisted generation with a draft model (external reference for speculative)"
    family = "draft model"
    Options = AssistedOptions
    uses_draft = True

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"assistant_model": self.draft.model}
        if self.options.num_draft is not None:  # else transformers' own default schedule
            self.draft.model.generation_config.num_assistant_tokens = self.options.num_draft
            self.draft.model.generation_config.num_assistant_tokens_schedule = "constant"
        return kwargs


@dataclass(frozen=True)
class HFPromptLookupOptions(Options):
    num_candidates: int = option(10, "candidate tokens per step", min=1, label="candidates")
    max_ngram: int = option(2, "largest n-gram to match", min=1)


@register
class HFPromptLookup(_Generate):
    name = "hf-pld"
    description = "transformers prompt_lookup_num_tokens (external reference for pld)"
    family = "prompt lookup"
    Options = HFPromptLookupOptions

    def generate_kwargs(self) -> dict[str, Any]:
        o = self.options
        return {"prompt_lookup_num_tokens": o.num_candidates, "max_matching_ngram_size": o.max_ngram}
