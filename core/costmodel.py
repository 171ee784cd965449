"""The cost model of a decode step: a stored forward-cost curve c(q, L) (`bench profile` measures it) and what it
predicts for a drafting method: speedup = tokens per forward / (verify cost + draft cost, in AR steps).

Used by `bench report` (predicted next to measured speedup) and by `--budget auto` (the draft size that maximises
expected tokens per second)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import BenchError
from core.presets import cache_dir


@dataclass
class ProfileKey:
    """What a cost curve depends on; `name()` is its folder under the cache."""

    model: str
    dtype: str
    device: str
    compile: bool = False
    threads: int = field(default_factory=torch.get_num_threads)

    def name(self) -> str:
        model = self.model.replace("/", "_")
        compiled = "-compile" if self.compile else ""
        return f"{model}-{self.dtype}-{self.device}{compiled}-t{self.threads}"

    def folder(self) -> Path:
        return cache_dir() / "profiles" / self.name()


class CostCurve:
    """c(q, L) from a stored profile, in milliseconds: linear interpolation in q and in L, clamped at the ends."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.contexts = sorted({int(r["context"]) for r in rows})
        self.queries = sorted({int(r["q"]) for r in rows})
        ms = {(int(r["context"]), int(r["q"])): float(r["ms"]) for r in rows}
        missing = [(c, q) for c in self.contexts for q in self.queries if (c, q) not in ms]
        if missing or 1 not in self.queries:
            raise BenchError("a cost curve needs q = 1 and every (context, q) cell")
        self.table = np.array([[ms[c, q] for q in self.queries] for c in self.contexts])

    @classmethod
    def load(cls, folder: Path, backend: str | None = None) -> CostCurve:
        import pandas as pd

        path = folder / "profile.csv"
        if not path.is_file():
            raise BenchError(f"no cost curve at {path}: run `bench profile` first")
        df = pd.read_csv(path)
        backend = backend or str(df["backend"].iloc[0])
        rows = df[df["backend"] == backend].to_dict("records")
        if not rows:
            raise BenchError(f"{path} has no rows for kernels {backend!r}: run `bench profile --kernels {backend}`")
        return cls(rows)

    def ms(self, q: Any, context: float) -> Any:
        """c(q, L) in ms; `q` may be an array (one cost per entry, one interpolation in L for all)."""
        pos = float(np.interp(context, self.contexts, np.arange(len(self.contexts))))
        lo, frac = int(pos), pos - int(pos)
        hi = min(lo + 1, len(self.contexts) - 1)
        cost = (1 - frac) * np.interp(q, self.queries, self.table[lo]) + frac * np.interp(
            q, self.queries, self.table[hi]
        )
        return float(cost) if np.ndim(cost) == 0 else cost

    def ratio(self, q: float, context: float) -> float:
        """c(q, L) / c(1, L): what a forward of q tokens costs in autoregressive steps."""
        return self.ms(q, context) / self.ms(1, context)


def stored(key: ProfileKey, backend: str | None = None) -> CostCurve | None:
    """The stored curve for `key`, or None when it was never measured."""
    try:
        return CostCurve.load(key.folder(), backend)
    except BenchError:
        return None


def _contexts(record: dict[str, Any]) -> list[int]:
    """Cached tokens before each target forward of a generation (the prompt, then every committed token)."""
    return list(record["prompt_tokens"] + np.cumsum([0, *record["accepted"][:-1]]))


def decode_cost(record: dict[str, Any], curve: CostCurve, draft: CostCurve | None = None) -> float | None:
    """Predicted milliseconds of a generation's forwards after the first (the prefill is not on the curve):
    c(q_i, L_i) per target forward, plus c_draft(1, L) per draft forward. None when the record does not say how
    many tokens each forward ran, or it had draft forwards and there is no draft curve."""
    steps = record.get("step_tokens") or ([1] * len(record["accepted"]) if record["method"] == "ar" else None)
    if steps is None or len(steps) != len(record["accepted"]) or (record.get("draft_forwards") and draft is None):
        return None
    contexts = _contexts(record)
    cost = sum(curve.ms(q, L) for q, L in zip(steps[1:], contexts[1:], strict=True))
    if record.get("draft_forwards"):
        cost += record["draft_forwards"] * draft.ms(1, float(np.mean(contexts)))
    return cost


def predicted_speedup(pairs: list[tuple[dict[str, Any], dict[str, Any]]], curve: CostCurve,
                      draft: CostCurve | None = None) -> float | None:  # fmt: skip
    """Decode-phase speedup the cost curve predicts for (method, baseline) record pairs: (method tokens after the
    first forward / predicted ms) over the baseline's. None when a method record cannot be priced."""
    totals = np.zeros(4)
    for method, baseline in pairs:
        costs = decode_cost(method, curve, draft), decode_cost(baseline, curve)
        if None in costs:
            return None
        totals += [method["new_tokens"] - method["accepted"][0], costs[0],
                   baseline["new_tokens"] - baseline["accepted"][0], costs[1]]  # fmt: skip
    if not pairs or totals[1] <= 0 or totals[3] <= 0:
        return None
    return float((totals[0] / totals[1]) / (totals[2] / totals[3]))


def measured_decode_speedup(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> float | None:
    """The measured speedup of the same phase: tokens after the first forward over the time after the first token
    (in a batch, each generation's share of the batch's decode time)."""

    def rate(records: list[dict[str, Any]]) -> float:
        tokens = sum(r["new_tokens"] - r["accepted"][0] for r in records)
        seconds = sum((r.get("batch_total_s", r["total_s"]) - r["ttft_s"]) / r.get("batch", 1) for r in records)
        return tokens / seconds if seconds > 0 else float("nan")

    if not pairs:
        return None
    method, baseline = rate([m for m, _ in pairs]), rate([b for _, b in pairs])
    return method / baseline if baseline > 0 and np.isfinite(method / baseline) else None
