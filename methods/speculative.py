"""`speculative`: draft-model speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

A small draft model with its own KV cache proposes k tokens; the target verifies them in one forward. Greedy
verification is lossless; sampling verification uses the rejection rule so the output follows the target's
distribution. k is fixed, or adapted (+2 after a fully accepted draft, -1 otherwise, as transformers' "heuristic"
schedule) within [1, max_draft]: without a cap k grows past the point where the draft forwards cost more than the
extra accepted tokens save (the i-th draft token is accepted with probability about a^i, so at a per-token
acceptance a = 0.8 an 11th token pays a draft forward for under 0.09 expected tokens; unbounded, our CPU runs reached
tau 4.21 at speedup 0.94 where a fixed k=4 gave tau 3.48 at 1.09). The default cap is twice the default k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.budget import BUDGET_HELP, BUDGETS, Budgeted
from methods.decode import Draft, Drafter, Sampler
from methods.kvcache import new_cache


class DraftModelDrafter:
    """Proposes tokens with a draft model; its cache is synced to the committed context on every call."""

    def __init__(self, draft: LoadedModel, k: int, adaptive: bool, sampler: Sampler | None,
                 max_draft: int | None = None) -> None:  # fmt: skip
        self.model = draft.model
        self.device = draft.device
        self.k = k
        self.adaptive = adaptive
        self.max_draft = max_draft  # the cap on k when adaptive (None: no cap)
        self.sampler = sampler
        self.cache = new_cache(self.model)
        self.cached: list[int] = []  # tokens whose keys/values are in self.cache
        self.draft_forwards = 0

    def _forward(self, ids: list[int]) -> torch.Tensor:
        self.draft_forwards += 1
        out = self.model(torch.tensor([ids], device=self.device), past_key_values=self.cache, logits_to_keep=1)
        self.cached += ids
        return out.logits[0, -1]

    def propose(self, context: list[int], budget: int) -> Draft | None:
        common = 0
        limit = min(len(self.cached), len(context) - 1)
        while common < limit and self.cached[common] == context[common]:
            common += 1
        if common < len(self.cached):
            self.cache.crop(common - len(self.cached))
            self.cached = self.cached[:common]
        logits = self._forward(context[common:])
        tokens, probs = [], []
        for i in range(min(self.k, budget)):
            if self.sampler is None:
                token = int(logits.argmax())
            else:
                q = self.sampler.probs(logits)
                token = self.sampler.sample(q)
                probs.append(q)
            tokens.append(token)
            if i + 1 < min(self.k, budget):
                logits = self._forward([token])
        return Draft.chain(tokens, torch.stack(probs) if probs else None)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        if self.adaptive:
            k = self.k + 2 if len(accepted) == len(draft.tokens) else self.k - 1
            self.k = max(1, k if self.max_draft is None else min(k, self.max_draft))


def check_same_tokenizer(target: LoadedModel, draft: LoadedModel) -> None:
    """Draft and target must map every token string to the same id."""
    t, d = target.tokenizer, draft.tokenizer
    if t.get_vocab() != d.get_vocab():
        raise BenchError(
            f"draft model {draft.artifact.get('spec')} has a different tokenizer than the target "
            f"{target.artifact.get('spec')} (vocab {len(d)} vs {len(t)}); speculative decoding needs the same one"
        )


@dataclass(frozen=True)
class SpeculativeOptions(Options):
    num_draft: int = option(5, "draft tokens per step (k)", min=1, label="k")
    adaptive: bool = option(False, "adapt the draft length: +2 after a fully accepted draft, -1 otherwise")
    max_draft: int = option(
        10,
        "cap on k with --adaptive (k stays in [1, max_draft]; 2x the default k)",
        min=1,
        label="k_max",
    )
    budget: str = option("fixed", BUDGET_HELP, choices=BUDGETS)

    def check(self, owner: str) -> None:
        if self.adaptive and self.num_draft > self.max_draft:
            raise BenchError(
                f"--num-draft ({self.num_draft}) must be at most --max-draft ({self.max_draft}) with --adaptive"
            )
        if self.adaptive and self.budget == "auto":
            raise BenchError("--adaptive and --budget auto both set the draft length: choose one")


@register
class Speculative(Budgeted, DraftingMethod):
    name = "speculative"
    description = "draft-model speculative decoding, greedy or rejection-sampling verification (lossless)"
    family = "draft model"
    Options = SpeculativeOptions
    uses_draft = True

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: SpeculativeOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        check_same_tokenizer(target, self.draft)
        self.init_budget(target, self.options.num_draft, self.draft)

    def max_step_tokens(self) -> int:
        return 1 + (self.options.max_draft if self.options.adaptive else self.options.num_draft)

    def drafter(self) -> Drafter:
        o = self.options
        drafter = DraftModelDrafter(self.draft, o.num_draft, o.adaptive, self.sampler, max_draft=o.max_draft)
        return self.budgeted(drafter, False)
