"""`--budget auto`: how many draft tokens the next forward verifies, chosen from the cost curve and the acceptance
observed so far in the run.

A forward of 1 + k tokens costs c(1 + k) (`bench profile`); with a draft model each draft token costs a draft
forward too. If draft position i is accepted with probability a_i given that the ones before it were, the forward
commits 1 + a_1 + a_1 a_2 + ... tokens on average. The budget picks the k in [0, k_max] with the most expected
tokens per millisecond; k = 0 is a plain autoregressive step, so a method that cannot win here degrades to AR
steps instead of losing time. The a_i are Laplace-smoothed counts over the run (they persist across prompts).
A draft whose first token a skipped step would have tested is scored against the token the AR step committed,
so cheap drafters (prompt lookup) keep learning while they are switched off; every `explore`-th skipped step
verifies the best k >= 1 anyway, so a drafter whose acceptance improves is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.costmodel import CostCurve, ProfileKey, stored
from core.errors import BenchError
from core.models import LoadedModel
from methods.decode import Draft, Drafter

BUDGETS = ("fixed", "auto")
BUDGET_HELP = (
    "fixed: the hand-set draft length; auto: per step, the length (up to the hand-set one; 0 = an AR step) "
    "with the most expected tokens/s from the cost curve (`bench profile`) and the acceptance so far"
)


def curve_for(model: LoadedModel, compiled: bool = False) -> CostCurve:
    """The stored cost curve of `model` under this process's settings, or a BenchError saying how to make it."""
    spec = str(model.artifact.get("spec", "model"))
    key = ProfileKey(Path(spec).name, str(model.artifact.get("dtype", "float32")), model.device.type, compiled,
                     torch.get_num_threads())  # fmt: skip
    curve = stored(key, str(model.artifact.get("kernels", "aten")))
    if curve is None:
        threads = f" --threads {key.threads}"
        raise BenchError(f"--budget auto needs the cost curve of {spec} ({key.name()}): run `bench profile --model "
                         f"{spec} --dtype {key.dtype} --device {key.device}{threads}` first")  # fmt: skip
    return curve


@dataclass
class BudgetPolicy:
    """Acceptance counts per draft position and the cost-optimal draft length; shared by a run's generations."""

    curve: CostCurve
    max_k: int
    draft: CostCurve | None = None  # the draft model's curve (one forward per draft token); None: drafting is free
    explore: int = 16
    reached: np.ndarray = field(init=False)
    taken: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.reached = np.zeros(self.max_k)
        self.taken = np.zeros(self.max_k)

    def expected(self, context: int) -> np.ndarray:
        """Expected committed tokens per millisecond for k = 0 .. max_k draft tokens."""
        alpha = (self.taken + 1) / (self.reached + 2)
        tokens = 1 + np.concatenate([[0.0], np.cumsum(np.cumprod(alpha))])
        ks = np.arange(self.max_k + 1)
        cost = self.curve.ms(1 + ks, context)
        if self.draft is not None:
            cost += ks * self.draft.ms(1, context)
        return tokens / cost

    def choose(self, context: int, skipped: int) -> int:
        rate = self.expected(context)
        best = int(np.argmax(rate))
        if best == 0 and skipped >= self.explore:
            return 1 + int(np.argmax(rate[1:]))
        return best

    def update(self, offered: int, accepted: int) -> None:
        """A verified chain of `offered` draft tokens of which the first `accepted` were accepted."""
        reach = min(offered, accepted + 1, self.max_k)
        self.reached[:reach] += 1
        self.taken[: min(accepted, reach)] += 1


class BudgetedDrafter:
    """A chain drafter whose draft length each step is the policy's choice (`chosen` records it per forward)."""

    def __init__(self, inner: Drafter, policy: BudgetPolicy, free_peek: bool) -> None:
        self.inner = inner
        self.policy = policy
        self.free_peek = free_peek  # proposing costs nothing: score a skipped draft's first token afterwards
        self.chosen: list[int] = []
        self.skipped = 0
        self._peek: tuple[int, int] | None = None  # (context length, the skipped draft's first token)

    @property
    def draft_forwards(self) -> int:
        return self.inner.draft_forwards

    def propose(self, context: list[int], budget: int) -> Draft | None:
        if self._peek is not None:
            at, token = self._peek
            self.policy.update(1, int(len(context) > at and context[at] == token))
            self._peek = None
        k = min(self.policy.choose(len(context), self.skipped), budget)
        self.chosen.append(k)
        if k == 0:
            self.skipped += 1
            if self.free_peek and (draft := self.inner.propose(context, 1)) and draft.tokens:
                self._peek = (len(context), draft.tokens[0])
            return None
        self.skipped = 0
        return self.inner.propose(context, k)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        self.policy.update(len(draft.tokens), len(accepted))
        self.inner.observe(draft, predicted, accepted)


class Budgeted:
    """For a chain-drafting method with a `budget` option: `budgeted(drafter)` applies `--budget auto`, with one
    policy for the method's whole run. Call `init_budget` from `__init__`, so a missing cost curve is refused
    before any generation; under `--compile` the policy reads the compiled target's curve."""

    policy: BudgetPolicy | None = None

    def init_budget(self, target: LoadedModel, max_k: int, draft: LoadedModel | None = None,
                    compiled: bool = False) -> None:  # fmt: skip
        self._budget_args = (target, max_k, draft)
        if self.options.budget == "auto":
            draft_curve = curve_for(draft) if draft is not None else None  # the draft model runs eagerly
            self.policy = BudgetPolicy(curve_for(target, compiled), max_k, draft_curve)

    def use_compiled(self, compiled: Any) -> None:
        super().use_compiled(compiled)
        self.init_budget(*self._budget_args, compiled=True)

    def budgeted(self, drafter: Drafter, free_peek: bool) -> Drafter:
        return drafter if self.policy is None else BudgetedDrafter(drafter, self.policy, free_peek)
