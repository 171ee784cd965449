"""`lookahead` (Fu et al. 2024, "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding")
and `jacobi` (plain Jacobi decoding, the lookahead branch's ablation baseline).

Lookahead keeps a 2D window of N-1 levels x W columns: the recent Jacobi trajectory. Each step runs, in ONE
target forward with a custom attention mask, the pending token, the window (lookahead branch) and up to G
candidate (N-1)-grams from the n-gram pool whose key is the pending token (verification branch).

Window token (level l, column k) sits at offset 1 + k + l from the pending token and sees the pending token,
level-0 tokens 0..k and its own column's levels 1..l: a contiguous sequence of positions, i.e. one Jacobi
iteration per column. The target's outputs at the top level give a new level (the window slides up a level),
and each column yields an n-gram (level 0..N-2 tokens, new output) for the pool.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

import torch

from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.decode import Draft


def window_mask(levels: int, width: int) -> torch.Tensor:
    """visible[i, j] among the window's tokens, laid out level by level (index l * width + k)."""
    size = levels * width
    visible = torch.zeros(size, size, dtype=torch.bool)
    for level in range(levels):
        for k in range(width):
            row = level * width + k
            visible[row, : k + 1] = True  # level 0, columns 0..k
            for up in range(1, level + 1):
                visible[row, up * width + k] = True  # own column, levels 1..level
    return visible


class LookaheadDrafter:
    """The lookahead branch (Jacobi window) and the verification branch (n-gram pool), per generation."""

    draft_forwards = 0

    def __init__(self, window: int, ngram: int, guess: int, seed_from_prompt: bool, seed: int = 0) -> None:
        self.W, self.N, self.G = window, ngram, guess
        self.seed_from_prompt = seed_from_prompt
        self.rng = random.Random(seed)
        self.levels: list[list[int]] = []
        self.pool: dict[int, OrderedDict[tuple[int, ...], None]] = {}
        n_window = (ngram - 1) * window
        self.positions = [1 + k + level for level in range(ngram - 1) for k in range(window)]
        self.window_visible = window_mask(ngram - 1, window)
        self.n_window = n_window

    def _add(self, gram: tuple[int, ...]) -> None:
        grams = self.pool.setdefault(gram[0], OrderedDict())
        grams.pop(gram[1:], None)
        grams[gram[1:]] = None  # most recent last
        if len(grams) > max(self.G, 1) * 4:
            grams.popitem(last=False)

    def _start(self, context: list[int]) -> None:
        self.levels = [[self.rng.choice(context) for _ in range(self.W)] for _ in range(self.N - 1)]
        if self.seed_from_prompt:
            for i in range(len(context) - self.N + 1):
                self._add(tuple(context[i : i + self.N]))

    def propose(self, context: list[int], budget: int) -> Draft:
        if not self.levels:
            self._start(context)
        guesses = list(self.pool.get(context[-1], {}))[-self.G :] if self.G else []
        guesses = [g[:budget] for g in reversed(guesses) if budget > 0]
        tokens = [t for level in self.levels for t in level]
        positions = list(self.positions)
        paths = []
        for g in guesses:
            paths.append(list(range(len(tokens), len(tokens) + len(g))))
            tokens += g
            positions += range(1, len(g) + 1)
        visible = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
        visible[: self.n_window, : self.n_window] = self.window_visible
        for path in paths:  # each guess is a causal chain that sees only itself (and the pending token)
            visible[path[0] : path[-1] + 1, path[0] : path[-1] + 1] = torch.ones(len(path), len(path)).tril() > 0
        return Draft(tokens, paths, positions, visible)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        top = (self.N - 2) * self.W
        outputs = predicted[1 + top : 1 + top + self.W]  # the target's next token after each top-level token
        for k in range(self.W):
            self._add(tuple(level[k] for level in self.levels) + (outputs[k],))
        self.levels = self.levels[1:] + [outputs]


class JacobiDrafter:
    """Plain Jacobi decoding: a guess of the next W tokens, refined by each forward's own outputs."""

    draft_forwards = 0

    def __init__(self, window: int, seed: int = 0) -> None:
        self.W = window
        self.rng = random.Random(seed)
        self.guess: list[int] = []

    def propose(self, context: list[int], budget: int) -> Draft:
        if not self.guess:
            self.guess = [self.rng.choice(context) for _ in range(self.W)]
        return Draft.chain(self.guess[: max(1, min(self.W, budget))])

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        # outputs after the accepted prefix are the refined guesses for the positions that follow
        refined = predicted[len(accepted) + 1 : len(draft.tokens) + 1]
        self.guess = (refined + self.guess[len(refined) :])[: self.W] if refined else []


def _window() -> int:
    return option(5, "Jacobi window size W", flags=("-W",), min=1, label="W")


@dataclass(frozen=True)
class LookaheadOptions(Options):
    window: int = _window()
    ngram: int = option(3, "n-gram size N", flags=("-N",), min=2, label="N")
    guess: int = option(5, "candidate n-grams verified per step G", flags=("-G",), min=0, label="G")
    prompt_ngrams: bool = option(True, "seed the n-gram pool with the prompt's n-grams")


@dataclass(frozen=True)
class JacobiOptions(Options):
    window: int = _window()


@register
class Lookahead(DraftingMethod):
    name = "lookahead"
    description = "Lookahead decoding: Jacobi window W, n-gram size N, G guesses, one forward per step (lossless)"
    family = "lookahead"
    Options = LookaheadOptions

    def drafter(self) -> LookaheadDrafter:
        o = self.options
        return LookaheadDrafter(o.window, o.ngram, o.guess, o.prompt_ngrams)


@register
class Jacobi(DraftingMethod):
    name = "jacobi"
    description = "plain Jacobi decoding of a W-token guess (the lookahead branch alone; lossless)"
    family = "lookahead"
    Options = JacobiOptions

    def drafter(self) -> JacobiDrafter:
        return JacobiDrafter(self.options.window)
