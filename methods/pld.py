"""`pld`: prompt-lookup decoding (Saxena 2023). Candidates are the tokens that followed the latest earlier
occurrence of the context's last n-gram (n from `max_ngram` down to 1) in the prompt and the generated text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.decode import Draft


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


@dataclass(frozen=True)
class PromptLookupOptions(Options):
    max_ngram: int = option(3, "largest n-gram to match", min=1)
    num_candidates: int = option(10, "candidate tokens per step", min=1, label="candidates")


@register
class PromptLookup(DraftingMethod):
    name = "pld"
    description = "prompt-lookup decoding: n-gram match in prompt + output, verified in one forward (lossless)"
    family = "prompt lookup"
    Options = PromptLookupOptions

    def drafter(self) -> PromptLookupDrafter:
        return PromptLookupDrafter(self.options.max_ngram, self.options.num_candidates)
