"""`bench report --against PAPER`: published numbers (package data `bench/data/published.csv`) joined with the
measured rows on task, category and method. A measurement of another model, dtype or hardware is shown but marked
not comparable, and gets no ratio."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from core.errors import BenchError

REFERENCE = resources.files("bench") / "data" / "published.csv"


def load_reference(path: Path | None = None) -> pd.DataFrame:
    """Published numbers: one row per (paper, model, hardware, task, category, method, settings, metric)."""
    with (path or REFERENCE).open("r", encoding="utf-8") as f:
        return pd.read_csv(f, keep_default_na=False, dtype={"claimed": float})


def against(df: pd.DataFrame, paper: str, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join a paper's claims with the measured rows on task, category and method. A measurement of another
    model, dtype or hardware is shown but marked not comparable, and gets no ratio."""
    reference = load_reference() if reference is None else reference
    claims = reference[reference["paper"] == paper]
    if claims.empty:
        papers = ", ".join(sorted(reference["paper"].unique()))
        raise BenchError(f"no published numbers for {paper!r}; known: {papers}")
    measured = df.assign(task=df["task"].str.split(":").str[0])
    out = []
    for claim in claims.itertuples():
        key = (measured["task"] == claim.task) & (measured["category"] == claim.category)
        hits = measured[key & (measured["method"] == claim.method)]
        same = hits[hits["settings"] == claim.settings]
        hits = same if not same.empty else hits  # the claim's own settings when measured, else every setting
        base = {
            "paper": paper, "task": claim.task, "category": claim.category, "method": claim.method,
            "metric": claim.metric, "claimed_model": claim.model, "claimed_hardware": claim.hardware,
            "claimed_settings": claim.settings, "claimed": claim.claimed,
        }  # fmt: skip
        if hits.empty:
            out.append(base | {"status": "not measured"})
        for hit in hits.itertuples():
            value = getattr(hit, claim.metric, None)
            why = []
            if hit.model_id.lower() != claim.model.lower():
                why.append(f"model {hit.model_id}")
            if claim.hardware.split()[0].lower() not in str(hit.device_name).lower():
                why.append(f"hardware {hit.device_name}")
            if claim.dtype and _dtype_short(hit.dtype) != claim.dtype:
                why.append(f"dtype {hit.dtype}")
            row = base | {"measured_model": hit.model, "measured_settings": hit.settings, "measured": value}
            if hit.settings != claim.settings:
                why.append("settings")
            if why:
                row["status"] = "not comparable: " + ", ".join(why)
            elif value is None or pd.isna(value):
                row["status"] = "no measured value" + (f" ({hit.flag})" if hit.flag else "")
            else:
                row |= {"ratio": value / claim.claimed, "status": "comparable"}
            out.append(row)
    cols = ["paper", "task", "category", "method", "metric", "claimed_model", "claimed_hardware", "claimed_settings"]
    cols += ["measured_model", "measured_settings", "claimed", "measured", "ratio", "status"]
    return pd.DataFrame(out).reindex(columns=cols)


def _dtype_short(dtype: str) -> str:
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)
