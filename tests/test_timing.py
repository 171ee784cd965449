"""The timer: bookkeeping of marks on CPU, and the CUDA event logic (checked with a stand-in for CUDA)."""

from __future__ import annotations

import time

import pytest
import torch

from core.timing import NullTimer, Timer


def test_cpu_timer_marks():
    timer = Timer("cpu")
    timer.start()
    time.sleep(0.01)
    timer.mark()  # first token
    for _ in range(3):
        time.sleep(0.002)
        timer.mark()
    t = timer.read()
    assert t.first >= 0.01
    assert len(t.steps) == 3 and len(t.step_times) == 3
    assert all(s >= 0.002 for s in t.step_times)
    assert t.first < t.steps[0] < t.steps[-1] <= t.total
    assert sum(t.step_times) == pytest.approx(t.steps[-1] - t.first)


def test_read_without_marks_fails():
    timer = Timer("cpu")
    timer.start()
    with pytest.raises(RuntimeError):
        timer.read()


def test_null_timer_reports_total_only():
    timer = NullTimer()
    timer.start()
    timer.mark()
    t = timer.read()
    assert t.steps == [] and t.total >= 0


class FakeEvent:
    clock = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t = None

    def record(self) -> None:
        FakeEvent.clock += 0.5
        self.t = FakeEvent.clock

    def elapsed_time(self, other: FakeEvent) -> float:  # milliseconds, like CUDA
        return (other.t - self.t) * 1000.0


def test_cuda_timer_uses_events_and_syncs_only_at_the_edges(monkeypatch):
    syncs = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append("sync"))
    timer = Timer("cuda")
    timer.start()
    assert syncs == ["sync"]  # earlier work is not billed to this generation
    for _ in range(4):
        timer.mark()
    assert syncs == ["sync"]  # no synchronisation inside the loop
    t = timer.read()
    assert syncs == ["sync", "sync"]
    assert t.first == pytest.approx(0.5)
    assert t.steps == pytest.approx([1.0, 1.5, 2.0])
    assert t.total == pytest.approx(2.5)
