"""How a task declares its quality metrics: the report, the regression check and the command line read these
declarations, so a new task's metric needs no edit outside the task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    """One quality metric of a task, in the units the task reports it (points for BLEU, percent for pass@1).

    `aggregate`: "mean" means the task scores each sample (`Task.score_sample`) and the run's value is their mean;
    "corpus" means the task scores all outputs at once (`Task.score`, e.g. corpus BLEU)."""

    name: str
    description: str
    higher_is_better: bool = True
    aggregate: Literal["mean", "corpus"] = "mean"

    def worse(self, value: float, reference: float, tolerance: float) -> bool:
        """Whether `value` is worse than `reference` by more than `tolerance` (in the metric's units)."""
        drop = reference - value if self.higher_is_better else value - reference
        return drop > tolerance
