"""`lookahead --budget auto`: per step, how many n-gram guesses to verify and whether to run the Jacobi window,
chosen from the cost curve (`bench profile`) and what the run has observed so far.

A step that verifies the first g guesses (in the pool's order, most recently inserted last) and runs the window
costs c(1 + guess tokens + window tokens). It commits 1 + A(g) tokens on average, where A(g) is the mean, over
the steps that verified at least g guesses, of the longest match among their first g (every verified step tells
what each smaller g would have accepted). The window commits nothing itself: it feeds the pool, so its value per
step is the tokens later accepted from window-made n-grams divided by the window steps run so far. Each step takes
the (g, window) pair with the most expected tokens per millisecond; g = 0 without the window is an AR step. After
`explore` AR steps in a row the best other pair runs, so a pool that has become useful is noticed. The statistics
persist across the prompts of a run, as the pool of a fixed-budget run does not (it is per generation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.costmodel import CostCurve


@dataclass
class LookaheadBudget:
    """Observed acceptance per number of verified guesses and the window's yield; picks each step's (g, window)."""

    curve: CostCurve
    max_guesses: int
    explore: int = 16
    matched: np.ndarray = field(init=False)  # sum over steps of the longest match among the first g guesses
    steps: np.ndarray = field(init=False)  # steps that verified at least g guesses
    window_steps: int = 0
    window_tokens: int = 0  # tokens accepted from n-grams the window made
    skipped: int = 0  # AR steps in a row

    def __post_init__(self) -> None:
        self.matched = np.zeros(self.max_guesses + 1)
        self.steps = np.zeros(self.max_guesses + 1)

    def choose(self, context: int, guess_tokens: list[int], window_tokens: int) -> tuple[int, bool]:
        """(guesses to verify, run the window) for a step after `context` tokens; `guess_tokens[g]` is the draft
        size of the first g guesses (g = 0 .. available), `window_tokens` the window's (0: the window cannot run)."""
        gains = (self.matched + 1) / (self.steps + 2)  # smoothed: an unseen g is worth half a token
        gains[0] = 0.0
        window_gain = (self.window_tokens + 0.5) / (self.window_steps + 1)
        g = np.arange(len(guess_tokens))
        sizes = np.asarray(guess_tokens)
        rates = [(1 + gains[g]) / self.curve.ms(1 + sizes, context)]
        if window_tokens:
            rates.append((1 + gains[g] + window_gain) / self.curve.ms(1 + sizes + window_tokens, context))
        rate = np.stack(rates)  # (window off/on, g)
        best = np.unravel_index(int(np.argmax(rate)), rate.shape)
        if best == (0, 0) and self.skipped >= self.explore and rate.size > 1:
            rate[0, 0] = -1.0
            best = np.unravel_index(int(np.argmax(rate)), rate.shape)
        self.skipped = self.skipped + 1 if best == (0, 0) else 0
        return int(best[1]), bool(best[0])

    def update(self, matches: list[int], window: bool, from_window: int) -> None:
        """After a step: the match length of each verified guess (in order), whether the window ran, and the
        tokens accepted from a window-made n-gram."""
        best = np.maximum.accumulate(np.asarray(matches)) if matches else np.zeros(0)
        self.matched[1 : 1 + len(best)] += best
        self.steps[1 : 1 + len(best)] += 1
        self.window_steps += int(window)
        self.window_tokens += from_window
