"""`speculative`: draft-model speculative decoding (Leviathan et al. 2023; Chen et al. 2023).

A small draft model with its own KV cache proposes k tokens; the target verifies them in one forward. Greedy
verification is lossless; sampling verification uses the rejection rule so the output follows the target's
distribution. k is fixed, or adapted (+2 after a fully accepted draft, -1 otherwise, as transformers' "heuristic"
schedule) within [1, max_draft]: without a cap k grows past the point where the draft forwards cost more than the
extra accepted tokens save (the i-th draft token is accepted with probability about a^i, so at a per-token
acceptance a = 0.8 an 11th token pays a draft forward for under 0.09 expected tokens; unbounded, our CPU runs reached
tau 4.21 at speedup 0.94 where a fixed k=4 gave tau 3.48 at 1.09). The default cap is twice the default k.

`--tree static|dynamic` drafts a token tree instead of a chain (SpecInfer / EAGLE-2; methods.draft_tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.budget import BUDGET_HELP, BUDGETS, Budgeted
from methods.decode import Draft, Drafter, Sampler
from methods.draft_tree import TREES, TreeDrafter, TreeShape, parse_branching
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

    def sync(self, context: list[int]) -> torch.Tensor:
        """Bring the cache to `context` (drop what differs, run the rest); the logits after its last token."""
        common = 0
        limit = min(len(self.cached), len(context) - 1)
        while common < limit and self.cached[common] == context[common]:
            common += 1
        if common < len(self.cached):
            self.cache.crop(common - len(self.cached))
            self.cached = self.cached[:common]
        return self._forward(context[common:])

    def choose(self, logits: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """The draft token after `logits`: the argmax, or under sampling a draw and the distribution it came from."""
        if self.sampler is None:
            return int(logits.argmax()), None
        q = self.sampler.probs(logits)
        return self.sampler.sample(q), q

    def propose(self, context: list[int], budget: int) -> Draft | None:
        logits = self.sync(context)
        tokens, probs = [], []
        for i in range(min(self.k, budget)):
            token, q = self.choose(logits)
            tokens.append(token)
            probs += [q] if q is not None else []
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


# options that only one tree kind reads: given with another kind, they are refused
TREE_ONLY = {"branching": "static", "depth": "dynamic", "children": "dynamic", "frontier": "dynamic",
             "max_nodes": "dynamic"}  # fmt: skip


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
    tree: str = option(
        "none",
        "none: a chain of k draft tokens; static: a token tree of fixed shape (--branching; SpecInfer); dynamic: "
        "a tree grown by draft confidence (--depth, --children, --frontier, --max-nodes; EAGLE-2)",
        choices=TREES,
    )
    branching: str = option(
        "3,2,1,1",
        "--tree static: children of each node per depth, comma-separated (3,2,1,1: 3 + 6 + 6 + 6 = 21 nodes, "
        "CPU-sized)",
    )
    depth: int = option(
        5,
        "--tree dynamic: levels of draft tokens, one draft forward each (EAGLE-2's reference depth=5 adds 5 levels "
        "under the pending token's children: --depth 6)",
        min=1,
    )
    children: int = option(
        4, "--tree dynamic: children drafted per expanded node (the reference's top_k=10; CPU-sized 4)", min=1
    )
    frontier: int = option(
        4,
        "--tree dynamic: nodes expanded per level, those with the highest cumulative draft probability (the "
        "reference expands top_k=10)",
        min=1,
    )
    max_nodes: int = option(
        20,
        "--tree dynamic: draft tokens verified, those with the highest cumulative draft probability (the "
        "reference's total_token=60 counts the pending token: --max-nodes 59; CPU-sized 20)",
        min=1,
    )

    def check(self, owner: str) -> None:
        if self.adaptive and self.num_draft > self.max_draft:
            raise BenchError(
                f"--num-draft ({self.num_draft}) must be at most --max-draft ({self.max_draft}) with --adaptive"
            )
        if self.adaptive and self.budget == "auto":
            raise BenchError("--adaptive and --budget auto both set the draft length: choose one")
        parse_branching(self.branching)
        defaults = SpeculativeOptions()
        chain_only = {"adaptive": "--adaptive", "budget": "--budget auto", "num_draft": "--num-draft"}
        for name, flag in chain_only.items():
            if self.tree != "none" and getattr(self, name) != getattr(defaults, name):
                raise BenchError(f"{flag} sets a chain's length: it does not apply to --tree {self.tree}")
        for name, kind in TREE_ONLY.items():
            if getattr(self, name) != getattr(defaults, name) and self.tree != kind:
                flag = "--" + name.replace("_", "-")
                raise BenchError(f"{flag} applies to --tree {kind} only (got --tree {self.tree})")

    @classmethod
    def unread(cls, values: dict[str, Any]) -> set[str]:
        tree = values.get("tree", "none")
        if tree == "none":
            return {"tree", *TREE_ONLY}
        return {"num_draft", "adaptive", "max_draft", "budget"} | {n for n, kind in TREE_ONLY.items() if kind != tree}

    def shape(self) -> TreeShape:
        """The tree shape of --tree static|dynamic."""
        return TreeShape(self.tree, parse_branching(self.branching), self.depth, self.children, self.frontier,
                         self.max_nodes)  # fmt: skip


@register
class Speculative(Budgeted, DraftingMethod):
    name = "speculative"
    description = (
        "draft-model speculative decoding (Leviathan et al. 2023, Fast Inference from Transformers via Speculative "
        "Decoding): a chain, or a token tree with --tree (SpecInfer, Miao et al. 2024; EAGLE-2, Li et al. 2024); "
        "greedy or rejection-sampling verification (lossless)"
    )
    family = "draft model"
    Options = SpeculativeOptions
    uses_draft = True

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: SpeculativeOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        check_same_tokenizer(target, self.draft)
        self.init_budget(target, self.options.num_draft, self.draft)

    def max_step_tokens(self) -> int:
        if self.options.tree != "none":
            return 1 + self.options.shape().size()
        return 1 + (self.options.max_draft if self.options.adaptive else self.options.num_draft)

    def drafter(self) -> Drafter:
        o = self.options
        drafter = DraftModelDrafter(self.draft, o.num_draft, o.adaptive, self.sampler, max_draft=o.max_draft)
        if o.tree != "none":
            return TreeDrafter(drafter, o.shape(), self.sampler)
        return self.budgeted(drafter, False)
