"""`hf`: transformers' own `generate()`, as an external reference on the same model and prompts."""

from __future__ import annotations

import torch
from transformers.generation.streamers import BaseStreamer

from bench.timing import Timer
from methods.base import Decoded, Method, register
from methods.decode import StopRule


class _MarkingStreamer(BaseStreamer):
    """Marks the timer each time `generate` emits tokens (the first call carries the prompt)."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.calls = 0

    def put(self, value: torch.Tensor) -> None:
        if self.calls:
            self.timer.mark()
        self.calls += 1

    def end(self) -> None:
        pass


@register
class HFGenerate(Method):
    name = "hf"
    description = "transformers generate() (greedy or sampling), external reference"

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        model, tokenizer = self.target.model, self.target.tokenizer
        kwargs = dict(max_new_tokens=stop.max_new_tokens, eos_token_id=sorted(stop.eos_ids) or None)
        if stop.stop_strings:
            kwargs.update(stop_strings=list(stop.stop_strings), tokenizer=tokenizer)
        if self.sampler is None:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            s = self.sampler
            torch.manual_seed(s.seed)
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
        prompt = torch.tensor([prompt_ids], device=self.target.device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop.eos_ids, default=0)
        streamer = _MarkingStreamer(timer)
        timer.start()
        with torch.inference_mode():
            out = model.generate(
                prompt, attention_mask=torch.ones_like(prompt), pad_token_id=pad, streamer=streamer, **kwargs
            )
        timing = timer.read()
        new = out[0, len(prompt_ids) :].tolist()
        end = stop.end(new, 0) or len(new)  # generate pads finished rows; keep our stop rule's length
        new = new[:end]
        return Decoded(new, [1] * len(new), timing)
