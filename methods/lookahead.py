"""`lookahead` (Fu et al. 2024, "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding")
and `jacobi` (plain Jacobi decoding, the lookahead branch's ablation baseline).

By default `lookahead` behaves as the reference code (hao-ai-lab/LookaheadDecoding, `lade/decoding.py`,
`jacobi_greedy_search_multilevel`). Each step runs, in ONE target forward with a custom attention mask, the
pending token, the lookahead branch (a 2D window) and the verification branch (every (N-1)-gram the pool holds
for the pending token, at most G):

- The window has N-1 levels. Level 0 is the pending token followed by window tokens (column 0 is the pending
  token), levels 1..N-2 have as many columns. The token at (level l, column c) sits at offset l + c from the
  pending token and sees level 0's columns 0..c and its own column's levels 1..l: one Jacobi iteration per column.
- Warm-up: level 0 starts as W + N - 3 tokens copied at random from the prompt; the upper levels are filled by
  N - 2 Jacobi steps (each step drops a column and adds a level from the top level's outputs). Until the window
  is full no guess is verified and no n-gram enters the pool.
- Full window: column c yields the n-gram (its level-0 token, its levels 1..N-2, the top level's output) for the
  pool; the pool keeps at most G n-grams per key, least recently inserted first out. The window then slides up a
  level (level 0 loses its first column) and the top level becomes the outputs.
- Verification commits at most N-1 tokens per step: a fully matched guess drops the target's token after it.

As in the reference, the first forward runs the prompt together with the first window (the engine merges the
prefill with the first step), so the first Jacobi level is computed with the prompt.

Named improvements (off by default; recorded in the run's settings): `prompt_ngrams` (the reference's
POOL_FROM_PROMPT: seed the pool with the prompt's n-grams and add the n-gram ending at each committed token),
`commit_full` (commit up to N tokens per step: the target's token after a fully matched guess too),
`share_prefixes` (guesses that share a prefix become one token trie, so no token is computed twice), and
`budget=auto` (methods.lookahead_budget: per step, the number of guesses, most recent first and cut to the tokens
a step can accept, and whether the window runs, chosen from the cost curve; a step without either is an AR step).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

import torch

from core.models import LoadedModel
from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.budget import BUDGETS, curve_for
from methods.decode import Draft, Sampler
from methods.lookahead_budget import LookaheadBudget


def _window() -> int:
    return option(5, "Jacobi window size W", flags=("-W",), min=1, label="W")


@dataclass(frozen=True)
class LookaheadOptions(Options):
    window: int = _window()
    ngram: int = option(3, "n-gram size N", flags=("-N",), min=2, label="N")
    guess: int = option(5, "n-grams kept per key in the pool and verified per step, G", flags=("-G",), min=0, label="G")
    prompt_ngrams: bool = option(False, "seed the pool with the prompt's n-grams and add each output n-gram")
    commit_full: bool = option(False, "commit up to N tokens per step (the reference commits at most N-1)")
    share_prefixes: bool = option(False, "verify guesses with a shared prefix as one token trie")
    budget: str = option(
        "fixed",
        "fixed: the window and every guess each step (the reference); auto: per step, how many guesses and whether "
        "the window runs, from the cost curve (`bench profile`) and the acceptance so far (none: an AR step)",
        choices=BUDGETS,
    )


@dataclass(frozen=True)
class JacobiOptions(Options):
    window: int = _window()


class NgramPool:
    """Up to `size` n-gram tails per first token, in insertion order; re-inserting one moves it to the end and the
    oldest leaves when a key is full (the reference's `GUESS_SET_SIZE` LRU lists). Each tail remembers whether the
    window made it (last insertion wins)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.grams: dict[int, dict[tuple[int, ...], bool]] = {}

    def add(self, gram: tuple[int, ...], from_window: bool = True) -> None:
        if self.size <= 0:
            return
        tails = self.grams.setdefault(gram[0], {})
        tails.pop(gram[1:], None)
        tails[gram[1:]] = from_window
        if len(tails) > self.size:
            del tails[next(iter(tails))]

    def get(self, key: int) -> list[tuple[int, ...]]:
        return list(self.grams.get(key, ()))

    def from_window(self, key: int, tail: tuple[int, ...]) -> bool:
        return self.grams.get(key, {}).get(tail, False)


def guess_tree(guesses: list[tuple[int, ...]], start: int, share: bool) -> tuple[list[int], list[int], list[list[int]]]:
    """(tokens, parent index or -1, path per guess) of the guesses laid out from index `start`: one chain each, or
    with `share` one trie whose nodes are unique per (parent, token)."""
    tokens: list[int] = []
    parents: list[int] = []
    paths: list[list[int]] = []
    nodes: dict[tuple[int, int], int] = {}
    for gram in guesses:
        path, parent = [], -1
        for token in gram:
            node = nodes.get((parent, token)) if share else None
            if node is None:
                node = start + len(tokens)
                tokens.append(token)
                parents.append(parent)
                nodes[(parent, token)] = node
            path.append(node)
            parent = node
        paths.append(path)
    return tokens, parents, paths


@functools.lru_cache(maxsize=64)
def window_layout(sizes: tuple[int, ...]) -> tuple[list[int], dict[tuple[int, int], int], torch.Tensor]:
    """Offsets, index by (level, column) and visibility of a window whose levels have these sizes (level 0 without
    the pending token, which is its column 0), laid out level by level. Token (level l, column c) sits at offset
    l + c and sees level 0's columns 1..c and its own column's levels 1..l (and, as every token, the pending one)."""
    cells = [(level, j + (1 if level == 0 else 0)) for level, size in enumerate(sizes) for j in range(size)]
    where = {cell: i for i, cell in enumerate(cells)}
    visible = torch.zeros(len(cells), len(cells), dtype=torch.bool)
    for i, (level, column) in enumerate(cells):
        for c in range(1, column + 1):
            visible[i, where[(0, c)]] = True
        for up in range(1, level + 1):
            visible[i, where[(up, column)]] = True
    return [level + column for level, column in cells], where, visible


class LookaheadDrafter:
    """The lookahead branch (the Jacobi window) and the verification branch (the n-gram pool), per generation."""

    draft_forwards = 0

    def __init__(self, options: LookaheadOptions, seed: int = 0, policy: LookaheadBudget | None = None) -> None:
        self.o = options
        self.rng = random.Random(seed)
        self.levels: list[list[int]] = []  # level 0 without the pending token, then levels 1..
        self.pool = NgramPool(options.guess)
        self.context: list[int] = []
        self.policy = policy
        self.chosen: list[int] | None = [] if policy is not None else None  # guesses verified per step (auto)
        self.window = True  # whether this step runs the window
        self.paths: list[list[int]] = []  # this step's path per guess
        self.origins: list[bool] = []  # whether the window made each guess (auto)

    @property
    def full(self) -> bool:
        return len(self.levels) == self.o.ngram - 1

    def _start(self, context: list[int]) -> None:
        self.levels = [[self.rng.choice(context) for _ in range(self.o.window + self.o.ngram - 3)]]
        if self.o.prompt_ngrams:
            for i in range(len(context) - self.o.ngram + 1):
                self.pool.add(tuple(context[i : i + self.o.ngram]), from_window=False)

    def _budget(self, key: int, guesses: list[tuple[int, ...]], cut: int) -> list[tuple[int, ...]]:
        """`budget=auto`: the guesses to verify (most recent first, cut to `cut` tokens); sets whether the window
        runs."""
        ranked: dict[tuple[int, ...], bool] = {}
        for tail in reversed(guesses):
            ranked.setdefault(tail[:cut], self.pool.from_window(key, tail))
        tails = list(ranked)
        sizes = [len(guess_tree(tails[:g], 0, self.o.share_prefixes)[0]) for g in range(len(tails) + 1)]
        g, self.window = self.policy.choose(len(self.context), sizes, sum(map(len, self.levels)))
        self.chosen.append(g)
        self.origins = list(ranked.values())[:g]
        return tails[:g]

    def propose(self, context: list[int], budget: int) -> Draft | None:
        if not self.levels:
            self._start(context)
        self.context = context
        guesses = self.pool.get(context[-1]) if self.full and budget > 0 else []
        accept = self.o.ngram - (1 if self.o.commit_full else 2)  # guess tokens one step may accept
        if self.policy is not None:
            guesses = self._budget(context[-1], guesses, min(accept, budget))
            if not guesses and not self.window:
                return None
        levels = self.levels if self.window else []
        offsets, where, window_visible = window_layout(tuple(len(row) for row in levels))
        tokens = [t for row in levels for t in row]
        n_window = len(tokens)
        g_tokens, parents, g_paths = guess_tree(guesses, n_window, self.o.share_prefixes)
        self.paths = [path[: min(accept, budget)] for path in g_paths]
        visible = torch.zeros(n_window + len(g_tokens), n_window + len(g_tokens), dtype=torch.bool)
        visible[:n_window, :n_window] = window_visible
        depths = []
        for k, parent in enumerate(parents):  # a guess token sees itself and its ancestors
            node = n_window + k
            visible[node, node] = True
            if parent >= 0:
                visible[node] |= visible[parent]
            depths.append(1 if parent < 0 else depths[parent - n_window] + 1)
        top = len(levels) - 1
        read = [where[(top, c)] for c in range(1 if top == 0 else 0, len(levels[0]) + 1)] if levels else []
        return Draft(tokens + g_tokens, [p for p in self.paths if p], offsets + depths, visible, read=read)

    def _outputs(self, draft: Draft, predicted: list[int]) -> list[int]:
        """The target's next token after each column of the top level (level 0: column 0 is the pending token)."""
        outputs = [predicted[1 + i] for i in draft.read]
        return [predicted[0], *outputs] if len(self.levels) == 1 else outputs

    def _learn(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        """`budget=auto`: tell the policy each guess's match length and what the window's n-grams gave."""
        matches = []
        for path in self.paths:
            n, row = 0, 0
            while n < len(path) and draft.tokens[path[n]] == predicted[row]:
                row, n = path[n] + 1, n + 1
            matches.append(n)
        j = next((j for j, path in enumerate(self.paths) if accepted and path[: len(accepted)] == accepted), None)
        self.policy.update(matches, self.window, len(accepted) if j is not None and self.origins[j] else 0)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        if self.policy is not None:
            self._learn(draft, predicted, accepted)
        # warm-up: every level loses its first column, the top level's outputs become a level
        if self.window and not self.full:
            outputs = self._outputs(draft, predicted)
            self.levels = [row[1:] for row in self.levels] + [outputs[1:]]
        elif self.window:
            outputs = self._outputs(draft, predicted)
            for c, key in enumerate([self.context[-1], *self.levels[0]]):
                self.pool.add((key, *(row[c] for row in self.levels[1:]), outputs[c]))
            self.levels = [self.levels[1][1:], *self.levels[2:], outputs] if len(self.levels) > 1 else [outputs[1:]]
        if self.o.prompt_ngrams:  # the n-gram ending at each committed token
            following = predicted[accepted[-1] + 1 if accepted else 0]
            history = self.context + [draft.tokens[i] for i in accepted] + [following]
            for end in range(max(len(self.context) + 1, self.o.ngram), len(history) + 1):
                self.pool.add(tuple(history[end - self.o.ngram : end]), from_window=False)


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


@register
class Lookahead(DraftingMethod):
    name = "lookahead"
    description = "Lookahead decoding: Jacobi window W, n-gram size N, G guesses, one forward per step (lossless)"
    family = "lookahead"
    Options = LookaheadOptions

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: LookaheadOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        self.policy = self._policy(compiled=False)

    def _policy(self, compiled: bool) -> LookaheadBudget | None:
        """`budget=auto`: one policy for the whole run, on the (compiled) target's cost curve."""
        if self.options.budget != "auto":
            return None
        return LookaheadBudget(curve_for(self.target, compiled), self.options.guess)

    def use_compiled(self, compiled: Any) -> None:
        super().use_compiled(compiled)
        self.policy = self._policy(compiled=True)

    def drafter(self) -> LookaheadDrafter:
        return LookaheadDrafter(self.options, policy=self.policy)


@register
class Jacobi(DraftingMethod):
    name = "jacobi"
    description = "plain Jacobi decoding of a W-token guess (the lookahead branch alone; lossless)"
    family = "lookahead"
    Options = JacobiOptions

    def max_step_tokens(self) -> int:
        return 1 + self.options.window

    def drafter(self) -> JacobiDrafter:
        return JacobiDrafter(self.options.window)
