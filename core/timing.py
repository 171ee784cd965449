"""The timing core shared by every method: marks inside the decode loop, read out once at the end.

On CUDA the marks are events recorded on the current stream (no synchronisation in the loop; one at read-out).
On CPU they are `time.perf_counter()` readings. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds since the start of a generation: `first` when the first new token is known, `steps` after each
    later target forward, `total` at the end."""

    first: float
    steps: list[float]
    total: float

    @property
    def step_times(self) -> list[float]:
        """Duration of each target forward after the prefill."""
        marks = [self.first, *self.steps]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class Timer:
    """Collects marks with perf_counter (CPU) or CUDA events (GPU); `read()` converts them once."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._marks: list = []

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Begin a generation; on CUDA, wait for earlier work so it is not billed to this one."""
        if self.cuda:
            torch.cuda.synchronize()
        self._marks = [self._now()]

    def mark(self) -> None:
        """Record a point in the loop (after the prefill, after each target forward). No synchronisation."""
        self._marks.append(self._now())

    def read(self) -> Timing:
        """End the generation: synchronise once and convert every mark to seconds since `start`.

        The last mark is the end of the generation; the first after `start` is the first token.
        """
        self._marks.append(self._now())
        if self.cuda:
            torch.cuda.synchronize()
            t0 = self._marks[0]
            secs = [t0.elapsed_time(e) / 1000.0 for e in self._marks[1:]]
        else:
            secs = [t - self._marks[0] for t in self._marks[1:]]
        if len(secs) < 2:
            raise RuntimeError("Timer.read() needs start() and at least one mark()")
        # secs = [first, step..., end]; the end mark coincides with the last step's mark in practice.
        return Timing(first=secs[0], steps=secs[1:-1], total=secs[-1])


class NullTimer(Timer):
    """A timer that records nothing: used to measure the timer's own overhead."""

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def mark(self) -> None:
        pass

    def read(self) -> Timing:
        total = time.perf_counter() - self._t0
        return Timing(first=total, steps=[], total=total)
