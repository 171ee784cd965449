"""How the engine verifies a draft after the target's forward: the greedy rule (the longest candidate path that
agrees with the target's argmax), rejection sampling over the candidate paths as a token trie, and the bookkeeping
of which step rows the LM head computed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from methods.decode import Draft, Sampler


def greedy(draft: Draft, predicted: list[int]) -> list[int]:
    """Indices of the longest candidate path that agrees with the target's argmax."""
    best: list[int] = []
    for path in draft.paths:
        n, row = 0, 0
        while n < len(path) and draft.tokens[path[n]] == predicted[row]:
            row = path[n] + 1
            n += 1
        if n > len(best):
            best = path[:n]
    return best


def sampling(draft: Draft, logits: torch.Tensor, rows: dict[int, int], sampler: Sampler) -> tuple[list[int], int]:
    """Rejection sampling over the candidate paths as a token trie: returns the accepted indices and the next token.

    At each node the target distribution p is tested against each distinct child token x: accepted with
    probability min(1, p(x)/q(x)) (q one-hot for deterministic drafts); on rejection p becomes the normalised
    residual max(p - q, 0). After the last accepted node, the next token is drawn from p (or the residual).
    Paths that agree on the accepted tokens all stay candidates, whichever draft index holds them (the target's
    distribution after a prefix does not depend on where in the draft the prefix was computed). `rows` maps a
    step row (0: the pending token, 1 + i: draft token i) to its row in `logits`.
    """
    accepted: list[int] = []
    alive, depth, row = draft.paths, 0, 0
    while True:
        p = sampler.probs(logits[rows[row]])
        children: dict[int, int] = {}
        for path in alive:
            if len(path) > depth:
                children.setdefault(draft.tokens[path[depth]], path[depth])
        chosen = None
        for token, index in children.items():
            q = draft.probs[index].to(p.device).float() if draft.probs is not None else None
            ratio = p[token] / q[token] if q is not None else p[token]
            if sampler.uniform() < float(ratio):
                chosen = index
                break
            if q is None:
                p = p.clone()
                p[token] = 0.0
            else:
                p = (p - q).clamp_min(0.0)
            total = p.sum()
            # a zero residual only happens by rounding; the target distribution is then the right fallback
            p = sampler.probs(logits[rows[row]]) if total <= 0 else p / total
        if chosen is None:
            return accepted, sampler.sample(p)
        accepted = next(path for path in alive if len(path) > depth and path[depth] == chosen)[: depth + 1]
        token = draft.tokens[chosen]
        alive = [path for path in alive if len(path) > depth and draft.tokens[path[depth]] == token]
        depth, row = depth + 1, chosen + 1


def read_rows(draft: Draft) -> list[int] | None:
    """The step rows whose next-token outputs are read (None: all): the pending token, every path token and the
    drafter's `read` tokens."""
    if draft.read is None:
        return None
    return sorted({0} | {1 + i for path in draft.paths for i in path} | {1 + i for i in draft.read})


class Identity(dict):
    """Every step row is its own logits row (all rows were computed)."""

    def __missing__(self, row: int) -> int:
        return row


def scatter(values: list[int], rows: list[int], size: int) -> list[int]:
    """`values` (one per read row) at their rows of a list of `size`; -1 where nothing was computed."""
    out = [-1] * size
    for row, value in zip(rows, values, strict=True):
        out[row] = value
    return out
