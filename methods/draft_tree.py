"""`speculative --tree`: the draft model drafts a token tree; the target verifies every path in one forward.

Shapes:
- static (SpecInfer, Miao et al. 2024, "SpecInfer: Accelerating Large Language Model Serving with Tree-based
  Speculative Inference and Verification"; fixed shapes as in Sequoia): `--branching 3,2,1,1` gives the pending
  token 3 children, each of them 2, and each node below one.
- dynamic (EAGLE-2, Li et al. 2024, "EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees";
  `topK_genrate` in SafeAILab/EAGLE eagle/model/cnets.py): level 1 holds the pending token's top-`children`
  tokens; at every level the `frontier` nodes with the highest cumulative draft probability (the product along
  the path) get their top-`children` children; at the end the `max_nodes` nodes with the highest cumulative
  probability are verified (a child never scores above its parent, so a kept node's ancestors are kept).

Each level is ONE draft forward over the level's expanded nodes: position = the pending token's + depth, and a mask
that shows each node the committed context (in the draft's cache) and its ancestors (earlier levels' expanded
nodes, appended to the cache); afterwards the cache is cropped back to the committed context. With a sliding-window
draft the layers show only their last window - 1 cached keys, tree nodes included: the draft then sees a little
less context (verification is unaffected).

Greedy: children are the draft's top-k; the engine accepts the longest path matching the target's argmax, lossless
for any tree. Sampling: the engine tests a node's children in order, accepting x with probability min(1, p(x)/q(x))
(q: the child's probs row) and replacing p by norm(max(p - q, 0)) on rejection. The children are drawn from the
draft distribution WITHOUT replacement (Gumbel-top-k) and child i's row is that distribution without its earlier
siblings, renormalised: recursive rejection sampling (Jeon et al. 2024, "Recursive Speculative Decoding"), exact.
SpecInfer's i.i.d. draws are not exact on this engine: it tests a repeated token once, where SpecInfer's rule tests
it again (a sure rejection, but one that subtracts q from the residual once more). Exactness also needs that
whether a child is verified never depends on its own token: under sampling the final cut ranks a node by its
PARENT's cumulative probability (siblings tie and keep their draw order), not by its own as EAGLE-2 does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from core.errors import BenchError
from methods.attention import layer_types
from methods.decode import Draft, Sampler

if TYPE_CHECKING:
    from methods.speculative import DraftModelDrafter

TREES = ("none", "static", "dynamic")


def parse_branching(text: str) -> tuple[int, ...]:
    """`"3,2,1,1"` -> (3, 2, 1, 1); anything but positive integers is a BenchError."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise BenchError(f"--branching must be positive integers separated by commas, one per depth (got {text!r})")
    return widths


@dataclass(frozen=True)
class TreeShape:
    """How a tree grows: static (a width per depth) or dynamic (depth, children, frontier, max_nodes)."""

    kind: str
    branching: tuple[int, ...] = ()
    depth: int = 1
    children: int = 1
    frontier: int = 1
    max_nodes: int = 1

    def levels(self, budget: int) -> int:
        return min(len(self.branching) if self.kind == "static" else self.depth, budget)

    def width(self, level: int) -> int:
        """Children per expanded node at `level` (1: the pending token's children)."""
        return self.branching[level - 1] if self.kind == "static" else self.children

    def size(self) -> int:
        """The most draft nodes a step verifies."""
        total, count = 0, 1
        for level in range(1, self.levels(len(self.branching) + self.depth) + 1):
            expanded = count if self.kind == "static" or level == 1 else min(count, self.frontier)
            count = expanded * self.width(level)
            total += count
        return total if self.kind == "static" else min(total, self.max_nodes)


class _Tree:
    """Nodes drafted so far, level by level; node 0 is the pending token. Per node: token, parent, depth,
    cumulative draft log-probability `cum`, and (sampling) the group (the draft distribution it was drawn from)
    and its rank among the siblings drawn from it."""

    def __init__(self) -> None:
        self.token = torch.zeros(1, dtype=torch.long)
        self.parent = torch.full((1,), -1)
        self.depth = torch.zeros(1, dtype=torch.long)
        self.cum = torch.zeros(1)
        self.group = torch.full((1,), -1)
        self.rank = torch.zeros(1, dtype=torch.long)
        self.dists: list[torch.Tensor] = []  # per level: the draft distribution of each expanded node (f, vocab)
        self.drawn: list[torch.Tensor] = []  # per level: each expanded node's children in draw order (f, k)

    def __len__(self) -> int:
        return len(self.token)

    def add(self, parents: torch.Tensor, tokens: torch.Tensor, logq: torch.Tensor, valid: torch.Tensor,
            dist: torch.Tensor | None) -> None:  # fmt: skip
        """Children `tokens` (f, k) of `parents` (f,), with their draft log-probabilities; `valid` marks the
        children that exist (siblings stay contiguous, in draw order)."""
        f, k = tokens.shape
        groups = sum(len(d) for d in self.dists) + torch.arange(f)
        if dist is not None:
            self.dists.append(dist)
            self.drawn.append(tokens)

        def grid(values: torch.Tensor) -> torch.Tensor:
            return values.expand(f, k)[valid]

        self.token = torch.cat([self.token, tokens[valid]])
        self.cum = torch.cat([self.cum, (self.cum[parents][:, None] + logq)[valid]])
        self.depth = torch.cat([self.depth, grid(self.depth[parents][:, None] + 1)])
        self.group = torch.cat([self.group, grid(groups[:, None])])
        self.rank = torch.cat([self.rank, grid(torch.arange(k)[None])])
        self.parent = torch.cat([self.parent, grid(parents[:, None])])

    def rows(self, kept: torch.Tensor) -> torch.Tensor:
        """The probs row of each kept node: its group's distribution without its earlier siblings, renormalised."""
        width = max(d.shape[1] for d in self.drawn)
        drawn = torch.cat([torch.nn.functional.pad(d, (0, width - d.shape[1])) for d in self.drawn])
        group = self.group[kept]
        rows = torch.cat(self.dists)[group.to(self.dists[0].device)].clone()
        earlier = (torch.arange(width)[None] < self.rank[kept][:, None]).to(rows)
        drop = torch.zeros_like(rows).scatter_add_(1, drawn[group].to(rows.device), earlier)
        rows[drop > 0] = 0.0
        return rows / rows.sum(-1, keepdim=True)


def _level_mask(model: Any, cache: Any, allowed: torch.Tensor, key_pos: torch.Tensor, q_pos: torch.Tensor
                ) -> torch.Tensor | dict[str, torch.Tensor]:  # fmt: skip
    """Additive masks for a level's queries over [cached keys, the level's own], per layer type (as
    methods.attention.step_mask builds the target's): a layer shows its last `shown` keys; a sliding layer also
    hides keys a window or more behind the query."""
    dtype, f = model.dtype, len(q_pos)
    masks = {}
    for i, kind in enumerate(layer_types(model)):
        if kind in masks:
            continue
        layer = cache.layers[i]
        shown = cache.get_mask_sizes(f, i)[0]
        ok = allowed[:, -shown:]
        if getattr(layer, "is_sliding", False):
            ok = ok & (key_pos[-shown:][None, :] > q_pos[:, None] - layer.sliding_window)
        mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device)
        masks[kind] = mask.masked_fill_(~ok, torch.finfo(dtype).min)[None, None]
    return masks if len(masks) > 1 else next(iter(masks.values()))


class TreeDrafter:
    """Drafts a token tree with a draft model, one draft forward per level (see the module docstring)."""

    def __init__(self, chain: DraftModelDrafter, shape: TreeShape, sampler: Sampler | None) -> None:
        self.chain = chain  # the draft model, its cache and the sync of that cache to the committed context
        self.shape = shape
        self.sampler = sampler

    @property
    def draft_forwards(self) -> int:
        return self.chain.draft_forwards

    def propose(self, context: list[int], budget: int) -> Draft | None:
        logits, n_context = self._start(context)
        tree, frontier = _Tree(), torch.zeros(1, dtype=torch.long)
        forwarded = torch.zeros(0, dtype=torch.long)  # nodes in the draft's cache after the context, in order
        levels = self.shape.levels(budget)
        for level in range(1, levels + 1):
            if level > 1:
                logits = self._forward_level(tree, frontier, forwarded, n_context)
                forwarded = torch.cat([forwarded, frontier])
            first = len(tree)
            self._grow(tree, frontier, logits, level)
            if level < levels:
                frontier = self._expanded(tree, first)
        if len(forwarded):
            self.chain.cache.crop(-len(forwarded))
        return self._draft(tree)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        """Nothing to learn: the shape is fixed or follows the draft's own probabilities."""

    def _start(self, context: list[int]) -> tuple[torch.Tensor, int]:
        """The draft's next-token logits (1, vocab) after `context`, its cache synced to it, and the number of
        cache entries the context takes."""
        return self.chain.sync(context)[None], len(context)

    def _grow(self, tree: _Tree, frontier: torch.Tensor, logits: torch.Tensor, level: int) -> None:
        """Add the children of the `frontier` nodes (next-token `logits`, one row each) at `level`."""
        tree.add(frontier, *self._children(logits, self.shape.width(level)))

    def _children(
        self, logits: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per row of `logits`: k children, their draft log-probabilities, which exist, and (sampling) the rows'
        distributions. Greedy: the top-k; sampling: k draws without replacement (Gumbel-top-k)."""
        k = min(k, logits.shape[-1])
        if self.sampler is None:
            top = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
            return top.indices.cpu(), top.values.cpu(), torch.ones(top.indices.shape, dtype=torch.bool), None
        q = self.sampler.probs(logits)
        u = torch.rand(q.shape, generator=self.sampler.generator).clamp_min(1e-30).to(q.device)
        tokens = (q.log() - (-u.log()).log()).topk(k, dim=-1).indices
        qx = q.gather(1, tokens).cpu()
        return tokens.cpu(), qx.log(), qx > 0, q

    def _expanded(self, tree: _Tree, first: int) -> torch.Tensor:
        """The nodes of the newest level (from `first` on) that get children."""
        if self.shape.kind == "static":
            return torch.arange(first, len(tree))
        order = torch.sort(-tree.cum[first:], stable=True).indices[: self.shape.frontier]
        return first + order.sort().values

    def _forward_level(self, tree: _Tree, frontier: torch.Tensor, forwarded: torch.Tensor, n_context: int
                       ) -> torch.Tensor:  # fmt: skip
        """One draft forward of the `frontier` nodes (one depth) over the cache: their next-token logits."""
        chain, f = self.chain, len(frontier)
        depth = int(tree.depth[frontier[0]])
        ancestors = torch.zeros(f, len(tree), dtype=torch.bool)
        node, rows = tree.parent[frontier], torch.arange(f)
        for _ in range(depth - 1):
            ancestors[rows, node] = True
            node = tree.parent[node]
        allowed = torch.cat([torch.ones(f, n_context, dtype=torch.bool), ancestors[:, forwarded],
                             torch.eye(f, dtype=torch.bool)], 1)  # fmt: skip
        position = n_context - 1 + depth
        key_pos = torch.cat(
            [torch.arange(n_context), n_context - 1 + tree.depth[forwarded], torch.full((f,), position)]
        )
        q_pos = torch.full((f,), position)
        mask = _level_mask(chain.model, chain.cache, allowed.to(chain.device), key_pos.to(chain.device),
                           q_pos.to(chain.device))  # fmt: skip
        chain.draft_forwards += 1
        return self._run_level(tree, frontier, q_pos.to(chain.device), mask)

    def _run_level(self, tree: _Tree, frontier: torch.Tensor, positions: torch.Tensor,
                   mask: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:  # fmt: skip
        """The draft forward of the `frontier` nodes at `positions` with `mask`, on the draft's cache."""
        ids = tree.token[frontier][None].to(self.chain.device)
        out = self.chain.model(ids, past_key_values=self.chain.cache, position_ids=positions[None],
                               attention_mask=mask)  # fmt: skip
        return out.logits[0]

    def _cut_score(self, tree: _Tree) -> torch.Tensor:
        """What the dynamic tree's final cut ranks nodes by: greedy, EAGLE-2's cumulative draft log-probability;
        sampling, the parent's (a node's own would make whether it is verified depend on its token: biased)."""
        return tree.cum if self.sampler is None else tree.cum[tree.parent.clamp_min(0)]

    def _draft(self, tree: _Tree) -> Draft:
        """The verified nodes as a Draft: paths in depth-first order with siblings in draw order (the order the
        engine tests children in), and the sampling rows."""
        if self.shape.kind == "static":
            kept = torch.arange(1, len(tree))
        else:
            order = torch.sort(-self._cut_score(tree)[1:], stable=True).indices[: self.shape.max_nodes]
            kept = 1 + order.sort().values
        index = torch.full((len(tree),), -1)
        index[kept] = torch.arange(len(kept))
        draft = Draft.tree(tree.token[kept].tolist(), index[tree.parent[kept]].tolist())
        draft.paths.sort()
        if self.sampler is not None:
            draft.probs = tree.rows(kept)
        return draft
