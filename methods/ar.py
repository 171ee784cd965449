"""`ar`: our own autoregressive decode loop (greedy or sampling) on the model's forward with a KV cache.

Every speedup in the harness is measured against this method.
"""

from __future__ import annotations

from bench.timing import Timer
from methods.base import Decoded, Method, register
from methods.decode import StopRule, verify_loop


@register
class Autoregressive(Method):
    name = "ar"
    description = "autoregressive decoding, greedy or sampling, our KV-cache loop (the baseline)"

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        result = verify_loop(self.target.model, prompt_ids, stop, timer, sampler=self.sampler)
        return Decoded(result.tokens, result.accepted, timer.read())
