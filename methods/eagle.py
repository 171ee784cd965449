"""`eagle` and `eagle2`: EAGLE's feature-level draft layer drafting a token tree (methods.eagle_model).

Following SafeAILab/EAGLE: EAGLE-1's code path at 996026e (eagle/model/cnets.py `topK_genrate` with the static tree
of choices.py, `mc_sim_7b_63`) and EAGLE-2's at 79d6f79 (the last commit before EAGLE-3; its cnets.py is cnets1.py
today: `topK_genrate` grows a dynamic tree; EaModel's defaults total_token=59, depth=5, top_k=10).

The draft layer keeps a KV cache over the pairs (feature_t, embedding(token_{t+1})) built from the target's REAL
features only (the reference's `stable_kv`): after every target forward the engine hands over the features of the
committed positions (`observe_hidden`); the next step feeds the new pairs (the last one pairs the newest feature
with the pending token) in one draft forward. Its last output's LM-head logits give the pending token's children;
each tree node then runs with its parent's draft output feature and its own token's embedding, at position =
depth, seeing the cached pairs and its ancestors; the tree's cache entries are cropped afterwards
(methods.draft_tree). Logits are always the target's frozen LM head on the draft feature. The first step has no
feature yet: it is an autoregressive step (the reference's prefill).

EAGLE-1: a choices list (paths of ranks: a node's children are its parent's draft top-r tokens); a level's forward
runs only the nodes that have children. EAGLE-2: draft_tree's dynamic tree (expand the top nodes by cumulative
draft probability, keep the top `max_nodes`). Greedy verification is lossless; under sampling the children are
draws without replacement with their recursive rows (draft_tree's exact scheme; the reference drafts the top-k),
so the output distribution is the target's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options, option
from methods import draft_vocab
from methods.base import DraftingMethod, register
from methods.decode import Draft, Drafter, Sampler
from methods.draft_tree import TreeDrafter, TreeShape, _Tree
from methods.eagle_model import EagleLayer, causal_mask, drafter_folder, load_layer
from methods.kvcache import new_cache

# EAGLE-1's tree (eagle/model/choices.py) and CPU-sized trees in the same format
CHOICES = {
    "mc_sim_7b_63": [[0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [0, 0, 0],
                     [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0], [0, 0, 0, 0],
                     [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]],
    "cpu-11": [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]],
    "chain-5": [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]],
}  # fmt: skip
# EAGLE-2's trees: the reference's total_token=59 (the pending token + 58), depth=5 (6 levels), top_k=10; CPU-sized
SIZES = {
    "reference": TreeShape("dynamic", depth=6, children=10, frontier=10, max_nodes=58),
    "cpu-20": TreeShape("dynamic", depth=5, children=4, frontier=4, max_nodes=20),
    "cpu-10": TreeShape("dynamic", depth=4, children=3, frontier=3, max_nodes=10),
}
DRAFT_HEADS_HELP = (
    "the draft layer: a folder or Hugging Face hub id in SafeAILab/EAGLE's layout (config.json + pytorch_model.bin "
    "or model.safetensors, e.g. yuhuili/EAGLE-Vicuna-7B-v1.3); train one with `bench train eagle`"
)


class ChoiceTree:
    """A choices list as tables: `child[node, rank]` (-1: none) and `count[node]`, node 0 = the pending token."""

    def __init__(self, paths: list[list[int]]) -> None:
        ids = {(): 0}
        for path in sorted(paths, key=lambda p: (len(p), p)):
            ids[tuple(path)] = len(ids)
        self.child = torch.full((len(ids), 1 + max(p[-1] for p in paths)), -1)
        for path, node in ids.items():
            if path:
                self.child[ids[path[:-1]], path[-1]] = node
        self.count = (self.child >= 0).sum(1)
        self.depth = torch.zeros(len(ids), dtype=torch.long)
        self.depth[list(ids.values())] = torch.tensor([len(p) for p in ids])
        self.size = len(paths)

    def shape(self) -> TreeShape:
        """A static shape with the tree's levels (the widest node per level)."""
        levels = int(self.depth.max())
        return TreeShape("static", tuple(int(self.count[self.depth == d].max()) for d in range(levels)))


class PairCache:
    """The draft layer, its KV cache over pairs of REAL target features and the next tokens (the reference's
    stable_kv), the features not fed yet, and the draft output of the newest pair."""

    def __init__(self, layer: EagleLayer, target: Any, head: torch.nn.Module | None = None) -> None:
        self.model = layer
        self.cache = new_cache(layer)
        self.device = layer.fc.weight.device
        self.embed = target.get_input_embeddings()
        self.head = target.get_output_embeddings() if head is None else head  # or the draft vocabulary's rows
        self.features: list[torch.Tensor] = []
        self.pairs = 0  # pairs in the cache: (feature_t, token_{t+1}) for t < pairs
        self.last: torch.Tensor | None = None
        self.draft_forwards = 0

    @property
    def ready(self) -> bool:
        return self.last is not None or bool(self.features)

    def sync(self, context: list[int]) -> torch.Tensor:
        """Feed the new pairs (one forward); the LM-head logits of the newest pair's draft output."""
        if self.features:
            features, n = torch.cat(self.features)[None], self.pairs
            m = features.shape[1]
            assert n + m == len(context) - 1, "features and context out of step"
            ids = torch.tensor([context[n + 1 : n + 1 + m]], device=self.device)
            positions = torch.arange(n, n + m, device=self.device)[None]
            mask = causal_mask(n, m, self.model.dtype, self.device)
            self.draft_forwards += 1
            self.last = self.model(features, self.embed(ids), positions, mask, self.cache)[0, -1]
            self.features, self.pairs = [], n + m
        assert self.last is not None
        return self.head(self.last)


class EagleDrafter(TreeDrafter):
    """draft_tree's TreeDrafter on EAGLE's feature cache: node inputs are (parent's draft feature, own token)."""

    reads_hidden = True

    def __init__(self, features: PairCache, shape: TreeShape, sampler: Sampler | None) -> None:
        super().__init__(features, shape, sampler)  # type: ignore[arg-type]
        self.out = torch.zeros(0)  # per tree node: its draft output feature (node 0: the newest pair's)

    def propose(self, context: list[int], budget: int) -> Draft | None:
        return super().propose(context, budget) if self.chain.ready else None

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        self.chain.features.append(hidden)

    def _start(self, context: list[int]) -> tuple[torch.Tensor, int]:
        logits = self.chain.sync(context)
        self.out = self.chain.last[None]
        return logits[None], self.chain.pairs

    def _run_level(self, tree: _Tree, frontier: torch.Tensor, positions: torch.Tensor,
                   mask: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        chain, out = self.chain, self.out
        if len(out) < len(tree):
            self.out = out = torch.cat([out, out.new_zeros(len(tree) - len(out), out.shape[1])])
        rows, parents = frontier.to(out.device), tree.parent[frontier].to(out.device)
        embeds = chain.embed(tree.token[frontier][None].to(chain.device))
        out[rows] = chain.model(out[parents][None], embeds, positions[None], mask, chain.cache)[0]
        return chain.head(out[rows])


class ChoicesDrafter(EagleDrafter):
    """EAGLE-1: the static tree of a choices list; only nodes with children are forwarded."""

    def __init__(self, features: PairCache, choices: ChoiceTree, sampler: Sampler | None) -> None:
        super().__init__(features, choices.shape(), sampler)
        self.choices = choices
        self.node = torch.zeros(1, dtype=torch.long)  # per tree node: its node in `choices`

    def _start(self, context: list[int]) -> tuple[torch.Tensor, int]:
        self.node = torch.zeros(1, dtype=torch.long)
        return super()._start(context)

    def _grow(self, tree: _Tree, frontier: torch.Tensor, logits: torch.Tensor, level: int) -> None:
        nodes = self.node[frontier]
        counts = self.choices.count[nodes]
        tokens, logq, valid, dist = self._children(logits, int(counts.max()))
        valid = valid & (torch.arange(tokens.shape[1])[None] < counts[:, None])
        tree.add(frontier, tokens, logq, valid, dist)
        self.node = torch.cat([self.node, self.choices.child[nodes, : tokens.shape[1]][valid]])

    def _expanded(self, tree: _Tree, first: int) -> torch.Tensor:
        return first + torch.nonzero(self.choices.count[self.node[first:]] > 0).flatten()


@dataclass(frozen=True)
class EagleOptions(Options):
    draft_heads: str | None = option(None, DRAFT_HEADS_HELP)
    draft_vocab: int | None = option(None, draft_vocab.HELP, min=1)
    tree: str = option(
        "mc_sim_7b_63",
        "EAGLE-1's static tree: mc_sim_7b_63 (the reference's choices.py, 25 draft tokens); CPU-sized: cpu-11, chain-5",
        choices=tuple(CHOICES),
    )


SHAPE_FIELDS = ("depth", "children", "frontier", "max_nodes")


@dataclass(frozen=True)
class Eagle2Options(Options):
    draft_heads: str | None = option(None, DRAFT_HEADS_HELP)
    draft_vocab: int | None = option(None, draft_vocab.HELP, min=1)
    tree: str = option(
        "reference",
        "EAGLE-2's dynamic tree: reference (EaModel's total_token=59, depth=5, top_k=10: 58 draft tokens, 6 levels, "
        "10 children and 10 expanded nodes per level); CPU-sized: cpu-20 (5 levels, 4, 4), cpu-10 (4 levels, 3, 3)",
        choices=tuple(SIZES),
    )
    depth: int | None = option(None, "levels of draft tokens (default: the --tree's; reference depth + 1)", min=1)
    children: int | None = option(None, "children drafted per expanded node (default: the --tree's; top_k)", min=1)
    frontier: int | None = option(None, "nodes expanded per level (default: the --tree's; top_k)", min=1)
    max_nodes: int | None = option(None, "draft tokens verified (default: the --tree's; total_token - 1)", min=1)

    @classmethod
    def unread(cls, values: dict[str, Any]) -> set[str]:
        return {name for name in SHAPE_FIELDS if values.get(name) is None}

    def shape(self) -> TreeShape:
        """The --tree preset with the given overrides."""
        given = {name: getattr(self, name) for name in SHAPE_FIELDS if getattr(self, name) is not None}
        return dataclasses.replace(SIZES[self.tree], **given)


class _EagleMethod(DraftingMethod):
    """Loads the draft layer once; each generation gets a fresh feature cache."""

    family = "eagle"
    compilable = False  # the drafter reads the target's hidden states (eager forward only)
    quantizable = False  # the draft layer reads the target's LM head weight

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: Options | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        source = self.options.draft_heads  # type: ignore[attr-defined]
        if source is None:
            raise BenchError(f"{self.name} needs a draft layer: --draft-heads PATH|HUB-ID (SafeAILab/EAGLE's layout), "
                             "or train one with `bench train eagle`")  # fmt: skip
        self.layer = load_layer(source, target)
        self.head = target.model.get_output_embeddings()
        n = self.options.draft_vocab  # type: ignore[attr-defined]
        if n is not None:
            ids = draft_vocab.frequent_tokens(drafter_folder(source), n, self.head.weight.shape[0])
            self.head = draft_vocab.SubsetHead(self.head, ids)

    def manifest(self) -> dict[str, Any]:
        return {"draft_heads": self.options.draft_heads}  # type: ignore[attr-defined]

    def features(self) -> PairCache:
        return PairCache(self.layer, self.target.model, self.head)


@register
class Eagle(_EagleMethod):
    name = "eagle"
    description = (
        "EAGLE (Li et al. 2024, EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty): a one-layer "
        "draft decoder on the target's features drafts a static token tree (--draft-heads); lossless"
    )
    Options = EagleOptions

    def max_step_tokens(self) -> int:
        return 1 + len(CHOICES[self.options.tree])

    def drafter(self) -> Drafter:
        return ChoicesDrafter(self.features(), ChoiceTree(CHOICES[self.options.tree]), self.sampler)


@register
class Eagle2(_EagleMethod):
    name = "eagle2"
    description = (
        "EAGLE-2 (Li et al. 2024, EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees): EAGLE's "
        "draft layer grows a dynamic token tree by draft confidence (--draft-heads); lossless"
    )
    Options = Eagle2Options

    def max_step_tokens(self) -> int:
        return 1 + self.options.shape().size()

    def drafter(self) -> Drafter:
        return EagleDrafter(self.features(), self.options.shape(), self.sampler)
