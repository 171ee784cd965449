"""`ar`: our own autoregressive decode loop (greedy or sampling) on the model's forward with a KV cache.

Every speedup in the harness is measured against this method.
"""

from __future__ import annotations

from methods.base import DraftingMethod, register


@register
class Autoregressive(DraftingMethod):
    name = "ar"
    description = "autoregressive decoding, greedy or sampling, our KV-cache loop (the baseline)"

    def drafter(self) -> None:
        return None

    def max_step_tokens(self) -> int:
        return 1
