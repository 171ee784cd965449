"""`pld`: prompt-lookup decoding (Saxena 2023). The context's last n-gram (n from `max_ngram` down to 1, the
largest n with an earlier occurrence) is looked up earlier in the prompt and the generated text; the tokens that
followed an occurrence are the candidates, verified in one target forward.

Which occurrence (`match`): `earliest` is the reference rule, as transformers' `PromptLookupCandidateGenerator`
implements it (the earliest occurrence whose continuation is non-empty, continuation up to `num_candidates` tokens
and up to the end of the context). Saxena's original `find_candidate_pred_tokens` also takes the earliest one, but
only with a full `num_pred_tokens` continuation. `latest` and `longest` are alternatives (see the option's help).
As in transformers, a draft is cut at its first EOS token (the EOS and what follows are dropped: the target then
predicts the EOS itself, so no draft token can outlive the end of the text); an empty draft is an AR step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from core.models import LoadedModel
from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.budget import BUDGET_HELP, BUDGETS, Budgeted
from methods.decode import Draft, Drafter, Sampler

MATCH_RULES = ("earliest", "latest", "longest")


class PromptLookupDrafter:
    """Finds the context's suffix n-gram earlier in the context and proposes what followed it."""

    draft_forwards = 0

    def __init__(self, max_ngram: int, num_candidates: int, match: str = "earliest",
                 eos_ids: Iterable[int] = ()) -> None:  # fmt: skip
        if match not in MATCH_RULES:
            raise ValueError(f"match must be one of {MATCH_RULES} (got {match!r})")
        self.max_ngram = max_ngram
        self.num_candidates = num_candidates
        self.match = match
        self.eos = np.asarray(sorted(eos_ids), dtype=np.int64)

    def propose(self, context: list[int], budget: int) -> Draft | None:
        ids = np.asarray(context, dtype=np.int64)
        limit = min(self.num_candidates, budget)
        if limit < 1:
            return None
        for n in range(min(self.max_ngram, len(ids) - 1), 0, -1):
            # windows over ids[:-1]: every occurrence but the suffix itself, each with a non-empty continuation
            windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)
            hits = np.flatnonzero((windows == ids[-n:]).all(axis=1))
            if len(hits):  # the largest n with an occurrence decides, as in the reference
                return self._choose(ids, hits + n, limit)
        return None

    def _choose(self, ids: np.ndarray, starts: np.ndarray, limit: int) -> Draft | None:
        """The draft among the continuations starting at `starts` (ascending), each capped at `limit` tokens and
        at the end of the context, and cut at its first EOS."""
        ends = np.minimum(starts + limit, len(ids))
        if self.eos.size:
            eos_at = np.append(np.flatnonzero(np.isin(ids, self.eos)), len(ids))
            ends = np.minimum(ends, eos_at[np.searchsorted(eos_at, starts)])  # the first EOS at or after start
        if self.match == "earliest":
            pick = 0
        elif self.match == "latest":
            pick = len(starts) - 1
        else:  # longest: argmax returns the first maximum, so ties go to the earliest
            pick = int(np.argmax(ends - starts))
        follow = ids[starts[pick] : ends[pick]]
        return Draft.chain(follow.tolist()) if len(follow) else None

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        pass


@dataclass(frozen=True)
class PromptLookupOptions(Options):
    max_ngram: int = option(3, "largest n-gram to match (the reference's max_ngram_size=3)", min=1)
    num_candidates: int = option(10, "candidate tokens per step (the reference's 10)", min=1, label="candidates")
    match: str = option(
        "earliest",
        "which earlier occurrence drafts: earliest (the reference rule), latest, or longest (continuation)",
        choices=MATCH_RULES,
    )
    budget: str = option("fixed", BUDGET_HELP, choices=BUDGETS)


@register
class PromptLookup(Budgeted, DraftingMethod):
    name = "pld"
    description = "prompt-lookup decoding: n-gram match in prompt + output, verified in one forward (lossless)"
    family = "prompt lookup"
    Options = PromptLookupOptions

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: PromptLookupOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        self.init_budget(target, self.options.num_candidates)

    def max_step_tokens(self) -> int:
        return 1 + self.options.num_candidates

    def drafter(self) -> Drafter:
        o = self.options
        return self.budgeted(PromptLookupDrafter(o.max_ngram, o.num_candidates, o.match, self.output_eos_ids()), True)
