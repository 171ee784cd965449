"""`pld`: prompt-lookup decoding (Saxena 2023). Candidates are the tokens that followed the latest earlier
occurrence of the context's last n-gram (n from `max_ngram` down to 1) in the prompt and the generated text."""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.timing import Timer
from methods.base import Decoded, Method, register
from methods.decode import Draft, StopRule, verify_loop


class PromptLookupDrafter:
    """Finds the context's suffix n-gram earlier in the context and proposes what followed it."""

    draft_forwards = 0

    def __init__(self, max_ngram: int, num_candidates: int) -> None:
        self.max_ngram = max_ngram
        self.num_candidates = num_candidates

    def propose(self, context: list[int], budget: int) -> Draft | None:
        ids = np.asarray(context)
        limit = min(self.num_candidates, budget)
        for n in range(min(self.max_ngram, len(ids) - 1), 0, -1):
            windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # excludes the suffix itself
            hits = np.flatnonzero((windows == ids[-n:]).all(axis=1))
            for start in hits[::-1]:  # the latest occurrence first
                follow = ids[start + n : start + n + limit]
                if len(follow):
                    return Draft.chain(follow.tolist())
        return None

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        pass


@register
class PromptLookup(Method):
    name = "pld"
    description = "prompt-lookup decoding: n-gram match in prompt + output, verified in one forward (lossless)"

    def __init__(self, target, sampler, max_ngram: int = 3, num_candidates: int = 10, **options) -> None:
        super().__init__(target, sampler, **options)
        if max_ngram < 1 or num_candidates < 1:
            raise BenchError("pld needs --max-ngram >= 1 and --num-candidates >= 1")
        self.max_ngram, self.num_candidates = max_ngram, num_candidates

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        drafter = PromptLookupDrafter(self.max_ngram, self.num_candidates)
        result = verify_loop(self.target.model, prompt_ids, stop, timer, drafter, self.sampler)
        return Decoded(result.tokens, result.accepted, timer.read())
