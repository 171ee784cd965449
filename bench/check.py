"""`bench check`: compare measured report rows with a baseline table (a `bench report` summary.csv) and list
regressions. Hardware-independent numbers are checked tightly (exactness of lossless greedy methods in fp32,
tau, quality in the direction each task's metric declares); speedups only within a wide band, and separately,
since they move with the machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report import quality_metrics, target_generates
from core.errors import BenchError

KEY = ["model", "method", "settings", "task", "category", "dtype"]


@dataclass
class Tolerance:
    tau: float = 0.05  # relative drop of tau allowed
    quality: float = 1.0  # absolute worsening in metric points (BLEU, ROUGE, pass@1 ...) allowed
    speedup: float = 0.5  # relative drop of the speedup allowed (wide: timing depends on the machine)


def read_baseline(path: Path) -> pd.DataFrame:
    """A baseline table written by `bench check --update` (or any `bench report` summary.csv)."""
    if not path.exists():
        raise BenchError(f"no such baseline table: {path} (create one with --update)")
    try:
        table = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"{path}: not a readable CSV ({exc})") from None
    missing = {*KEY, "tau"} - set(table.columns)
    if missing:
        raise BenchError(f"{path}: not a report table (missing columns {', '.join(sorted(missing))})")
    return table


def _key(row: pd.Series) -> tuple:
    return tuple("" if pd.isna(row[k]) else str(row[k]) for k in KEY)


def _known(*values: object) -> bool:
    return all(v is not None and pd.notna(v) for v in values)


def row_problems(name: str, row: pd.Series, ref: pd.Series | None, tol: Tolerance) -> tuple[list[str], list[str]]:
    """(hard, speed) regressions of one measured row against its baseline row (None: not in the baseline)."""
    hard: list[str] = []
    if row.get("flag"):
        hard.append(f"{name}: impossible numbers ({row['flag']})")
    greedy = "T=" not in str(row["settings"])
    exact = row.get("exact_rate")
    if greedy and row["dtype"] == "float32" and target_generates(row["method"]) and _known(exact) and exact < 1:
        hard.append(f"{name}: exact rate {exact:.3f} < 1.0 for a lossless method in fp32")
    if ref is None:
        return hard, []
    if _known(ref.get("tau")) and row["tau"] < ref["tau"] * (1 - tol.tau):
        hard.append(f"{name}: tau {row['tau']:.3f} < baseline {ref['tau']:.3f} (tolerance {tol.tau:.0%})")
    for q, metric in quality_metrics().items():
        if _known(row.get(q), ref.get(q)) and metric.worse(row[q], ref[q], tol.quality):
            hard.append(f"{name}: {q} {row[q]:.2f} worse than baseline {ref[q]:.2f} (tolerance {tol.quality} points)")
    got, want = row.get("speedup"), ref.get("speedup")
    slow = _known(got, want) and got < want * (1 - tol.speedup)
    return hard, [f"{name}: speedup {got:.3f} < baseline {want:.3f} (band {tol.speedup:.0%})"] if slow else []


def regressions(measured: pd.DataFrame, baseline: pd.DataFrame, tol: Tolerance) -> tuple[list[str], list[str]]:
    """(hardware-independent regressions, speedup regressions), one readable line each."""
    hard: list[str] = []
    speed: list[str] = []
    base = {_key(r): r for _, r in baseline.iterrows() if r["method"] != "ar"}
    seen = set()
    for _, row in measured[measured["method"] != "ar"].iterrows():
        key = _key(row)
        seen.add(key)
        more_hard, more_speed = row_problems(" ".join(k for k in key if k), row, base.get(key), tol)
        hard += more_hard
        speed += more_speed
    for key in sorted(set(base) - seen):
        hard.append(f"{' '.join(k for k in key if k)}: in the baseline but not measured")
    return hard, speed
