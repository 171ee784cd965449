"""`ar`: our own autoregressive decode loop (greedy or sampling) on the model's forward with a KV cache.

Every speedup in the harness is measured against this method. `--batch-size B` decodes B prompts at once
(methods.batched: left padding, one forward per step for the whole batch).
"""

from __future__ import annotations

from core.errors import BenchError
from core.timing import Timer
from methods.base import Decoded, DraftingMethod, register
from methods.batched import decode_batch, pad_id
from methods.decode import StopRule


@register
class Autoregressive(DraftingMethod):
    name = "ar"
    description = "autoregressive decoding, greedy or sampling, our KV-cache loop (the baseline)"
    batchable = True

    def drafter(self) -> None:
        return None

    def max_step_tokens(self) -> int:
        return 1

    def generate_batch(self, prompts: list[list[int]], stops: list[StopRule], timer: Timer) -> list[Decoded]:
        if self.compiled is not None:  # the compiled forwards are batch-1 graphs
            if len(prompts) > 1:
                raise BenchError("ar --compile decodes one prompt at a time: drop --batch-size or --compile")
            return [self.generate(prompts[0], stops[0], timer)]
        eos = frozenset().union(*(stop.eos_ids for stop in stops)) or frozenset(self.target.eos_ids())
        pad = pad_id(self.target.tokenizer, eos)
        rows = decode_batch(self.target.model, prompts, stops, timer, pad, self.sampler)
        timing = timer.read()
        return [Decoded(tokens, [1] * len(tokens), timing) for tokens in rows]
