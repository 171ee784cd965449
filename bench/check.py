"""`bench check`: compare measured report rows with a baseline table (a `bench report` summary.csv) and list
regressions. Hardware-independent numbers are checked tightly (exactness of lossless greedy methods in fp32,
tau, quality); speedups only within a wide band, and separately, since they move with the machine."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report import QUALITY, target_generates

KEY = ["model", "method", "settings", "task", "category", "dtype"]


@dataclass
class Tolerance:
    tau: float = 0.05  # relative drop of tau allowed
    quality: float = 1.0  # absolute drop in metric points (BLEU, ROUGE, pass@1 ...) allowed
    speedup: float = 0.5  # relative drop of the speedup allowed (wide: timing depends on the machine)


def _key(row: pd.Series) -> tuple:
    return tuple("" if pd.isna(row[k]) else str(row[k]) for k in KEY)


def regressions(measured: pd.DataFrame, baseline: pd.DataFrame, tol: Tolerance) -> tuple[list[str], list[str]]:
    """(hardware-independent regressions, speedup regressions), one readable line each."""
    hard: list[str] = []
    speed: list[str] = []
    base = {_key(r): r for _, r in baseline.iterrows() if r["method"] != "ar"}
    seen = set()
    for _, row in measured.iterrows():
        if row["method"] == "ar":
            continue
        key = _key(row)
        name = " ".join(k for k in key if k)
        seen.add(key)
        if row.get("flag"):
            hard.append(f"{name}: impossible numbers ({row['flag']})")
        greedy = "T=" not in str(row["settings"])
        exact = row.get("exact_rate")
        if greedy and row["dtype"] == "float32" and target_generates(row["method"]) and pd.notna(exact) and exact < 1:
            hard.append(f"{name}: exact rate {exact:.3f} < 1.0 for a lossless method in fp32")
        ref = base.get(key)
        if ref is None:
            continue
        if pd.notna(ref.get("tau")) and row["tau"] < ref["tau"] * (1 - tol.tau):
            hard.append(f"{name}: tau {row['tau']:.3f} < baseline {ref['tau']:.3f} (tolerance {tol.tau:.0%})")
        for q in QUALITY:
            if q in row and q in ref and pd.notna(ref[q]) and pd.notna(row[q]) and row[q] < ref[q] - tol.quality:
                hard.append(f"{name}: {q} {row[q]:.2f} < baseline {ref[q]:.2f} (tolerance {tol.quality} points)")
        got, want = row.get("speedup"), ref.get("speedup")
        if pd.notna(want) and pd.notna(got) and got < want * (1 - tol.speedup):
            speed.append(f"{name}: speedup {got:.3f} < baseline {want:.3f} (band {tol.speedup:.0%})")
    for key in sorted(set(base) - seen):
        hard.append(f"{' '.join(k for k in key if k)}: in the baseline but not measured")
    return hard, speed
