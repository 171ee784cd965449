"""`bench report`: one table from many run directories, impossible numbers flagged, and paper-vs-measured joins.

A row is one (run, category): the method's records paired with the AR baseline's records on the same prompt ids
(from the same run directory, or from the shared `ar` run a sweep points to). Definitions: shared/metrics.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.store import MANIFEST, SAMPLES, SUMMARY, read_samples

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "published.csv"
QUALITY = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "pass@1", "accuracy")
SHORT = {"window": "W", "ngram": "N", "guess": "G", "num_draft": "k", "num_candidates": "candidates"}


@dataclass
class Run:
    """One run directory as stored by `bench run`."""

    root: Path
    config: dict[str, Any]
    environment: dict[str, Any]
    method: list[dict[str, Any]]
    baseline: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    baseline_kind: str | None = None  # the node kind the baseline was measured on

    @property
    def same_hardware(self) -> bool:
        """Whether method and baseline were timed on the same kind of node (unknown for old runs: assumed)."""
        mine = self.environment.get("node_kind")
        return mine is None or self.baseline_kind is None or mine == self.baseline_kind


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run directory at or below `paths` (a directory holding a manifest.json), sorted by path."""
    roots: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise BenchError(f"no such run directory: {path}")
        roots |= {m.parent for m in ([path / MANIFEST] if (path / MANIFEST).exists() else path.rglob(MANIFEST))}
    if not roots:
        raise BenchError(f"no run directories (with {MANIFEST}) under {', '.join(map(str, paths))}")
    return [load_run(r) for r in sorted(roots)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise BenchError(f"{path}: not valid JSON") from None


def load_run(root: Path) -> Run:
    """Read a run directory; the baseline records come from the run itself or from its shared `ar` run."""
    manifest = _read_json(root / MANIFEST)
    if "config" not in manifest:
        raise BenchError(f"{root / MANIFEST}: no config; not a bench run directory")
    config = manifest["config"]
    records, _ = read_samples(root / SAMPLES)
    baseline = [r for r in records if r["role"] == "baseline"]
    environment = manifest.get("environment", {})
    baseline_kind = environment.get("node_kind")
    if config.get("baseline_run"):
        shared = (root / config["baseline_run"]).resolve()
        if not (shared / MANIFEST).exists():
            raise BenchError(f"{root}: its baseline run {shared} is missing")
        baseline = [r for r in read_samples(shared / SAMPLES)[0] if r["role"] == "method"]
        baseline_kind = _read_json(shared / MANIFEST).get("environment", {}).get("node_kind")
    summaries = _read_json(root / SUMMARY) if (root / SUMMARY).exists() else []
    method = [r for r in records if r["role"] == "method"]
    return Run(root, config, environment, method, baseline, summaries, baseline_kind)


def failed_cells(paths: list[Path]) -> list[tuple[str, str]]:
    """(cell, reason) of every cell a sweep under `paths` recorded as failed in its sweep.json."""
    out = []
    for path in paths:
        for status_file in [path / "sweep.json"] if (path / "sweep.json").exists() else path.rglob("sweep.json"):
            cells = _read_json(status_file).get("cells", {}).items()
            out += [(str(status_file.parent / k), c.get("reason", "")) for k, c in cells if c["status"] != "done"]
    return out


def settings_label(config: dict[str, Any]) -> str:
    """The method's settings in the papers' words: "W=5 N=3 G=5", "k=4 draft=...", "T=0.7"."""
    options = config.get("options", {})
    order = sorted(options, key=lambda k: (list(SHORT).index(k) if k in SHORT else len(SHORT), k))
    parts = [f"{SHORT.get(k, k)}={options[k]}" for k in order]
    if config.get("draft"):
        parts.append(f"draft={config['draft']}")
    if config.get("temperature"):
        parts.append(f"T={config['temperature']}")
    return " ".join(parts)


def model_id(config: dict[str, Any]) -> str:
    """The model's hub id where known (presets and hub runs), else its spec."""
    from bench.models import PRESETS

    spec = config["model"]
    preset = PRESETS.get(spec)
    return preset.hub_id if preset and preset.hub_id else Path(spec).name


def bootstrap_mean(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` by resampling them with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def group_row(method: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed fields of one group of method records, paired with the baseline on the same prompt ids."""
    tokens = sum(r["new_tokens"] for r in method)
    seconds = sum(r["total_s"] for r in method)
    ttft = [r["ttft_s"] * 1e3 for r in method]
    tpot = [r["tpot_s"] * 1e3 for r in method if r.get("tpot_s") is not None]
    encode = [r["encode_s"] * 1e3 for r in method if r.get("encode_s") is not None]
    exact = [r["exact"] for r in method if r.get("exact") is not None]
    row: dict[str, Any] = {
        "samples": len(method),
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_median": float(np.median([r["tokens_per_s"] for r in method])),
        "tau": tokens / sum(r["target_forwards"] for r in method),
        "exact_rate": sum(exact) / len(exact) if exact else None,
        "ttft_ms_median": _pct(ttft, 50),
        "ttft_ms_p90": _pct(ttft, 90),
        "tpot_ms_median": _pct(tpot, 50),
        "tpot_ms_p90": _pct(tpot, 90),
        "encode_ms_median": _pct(encode, 50),
        "paired_samples": 0,
        "speedup": None,
    }
    by_id = {r["prompt_id"]: r for r in baseline}
    pairs = [(r, by_id[r["prompt_id"]]) for r in method if r["prompt_id"] in by_id]
    if pairs:
        rate = sum(m["new_tokens"] for m, _ in pairs) / sum(m["total_s"] for m, _ in pairs)
        base = sum(b["new_tokens"] for _, b in pairs) / sum(b["total_s"] for _, b in pairs)
        ratios = np.array([m["tokens_per_s"] / b["tokens_per_s"] for m, b in pairs])
        low, high = bootstrap_mean(ratios)
        row |= {
            "paired_samples": len(pairs),
            "baseline_tokens_per_s": base,
            "speedup": rate / base,
            "speedup_mean": float(ratios.mean()),
            "speedup_ci_low": low,
            "speedup_ci_high": high,
            "overhead": row["tau"] / (rate / base),
        }
    return row


def flags(row: dict[str, Any], expect_baseline: bool) -> list[str]:
    """Why a row's numbers cannot be true (empty when they can)."""
    out = []
    if row["tau"] < 1 - 1e-9:
        out.append(f"tau {row['tau']:.3f} below 1")
    roofline = row.get("roofline_tokens_per_s")
    if roofline and target_generates(row["method"]) and row["tokens_per_s"] > roofline * max(row["tau"], 1.0):
        out.append(f"{row['tokens_per_s']:.1f} tok/s above the roofline ({roofline * max(row['tau'], 1):.1f})")
    if expect_baseline and row["paired_samples"] == 0:
        out.append("no baseline samples to compute a speedup on")
    return out


def target_generates(method: str) -> bool:
    """Whether the target model makes every forward (so the target's roofline bounds the speed)."""
    from methods.base import get_method

    try:
        return get_method(method).lossless
    except BenchError:  # a method this version does not know: assume the target's roofline applies
        return True


def run_rows(run: Run) -> list[dict[str, Any]]:
    """The rows of one run: all samples, then each category when there are several; plus the baseline's row
    when the baseline lives in this run directory (a shared baseline is reported by its own `ar` run)."""
    config, env = run.config, run.environment
    summary = {s["role"]: s for s in run.summaries}
    common = {
        "model": Path(config["model"]).name,
        "model_id": model_id(config),
        "task": config["task"] + (f":{config['split']}" if config.get("split") else ""),
        "dtype": config["dtype"],
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "torch": env.get("torch"),
        "transformers": env.get("transformers"),
        "commit": env.get("git_commit"),
        "run": str(run.root),
    }
    lanes = [("method", config["method"], settings_label(config), run.method)]
    if run.baseline and not config.get("baseline_run"):
        lanes.append(("baseline", "ar", "", run.baseline))
    rows = []
    for role, method, settings, records in lanes:
        if not records:
            continue
        categories = sorted({r.get("category") for r in records} - {None})
        groups = [("all", records)] + [(c, [r for r in records if r.get("category") == c]) for c in categories]
        for category, group in groups if len(categories) > 1 else groups[:1]:
            row = common | {"method": method, "settings": settings, "category": category}
            row |= group_row(group, run.baseline if run.same_hardware else [])
            if category == "all":
                s = summary.get(role, {})
                row["roofline_tokens_per_s"] = s.get("roofline_tokens_per_s")
                row["roofline_fraction"] = s.get("roofline_fraction")
                base_quality = summary.get("baseline", {})
                for key in QUALITY:
                    if key in s:
                        row[key] = s[key]
                        if key in base_quality:
                            row[f"{key}_delta"] = s[key] - base_quality[key]
            expect = role == "method" and config["method"] != "ar" and config.get("baseline", True)
            problems = flags(row, expect and run.same_hardware)
            if role == "method" and not run.same_hardware:
                problems.append(f"baseline timed on other hardware ({run.baseline_kind}); no speedup")
            row["flag"] = "; ".join(problems)
            rows.append(row)
    return rows


COLUMNS = [
    "model", "method", "settings", "task", "category", "dtype", "samples", "tokens_per_s", "tokens_per_s_median",
    "speedup", "speedup_mean", "speedup_ci_low", "speedup_ci_high", "tau", "overhead", "exact_rate",
    "ttft_ms_median", "ttft_ms_p90", "tpot_ms_median", "tpot_ms_p90", "encode_ms_median",
    *[q for k in QUALITY for q in (k, f"{k}_delta")], "roofline_tokens_per_s", "roofline_fraction",
    "baseline_tokens_per_s", "paired_samples", "new_tokens", "flag", "model_id", "device", "device_name", "torch",
    "transformers", "commit", "run",
]  # fmt: skip
SPEED = ["tokens_per_s", "tokens_per_s_median", "speedup", "speedup_mean", "speedup_ci_low", "speedup_ci_high",
         "overhead", "roofline_fraction"]  # fmt: skip


def table(runs: list[Run]) -> pd.DataFrame:
    """All rows of all runs; a flagged row keeps its reason, not its speed numbers."""
    df = pd.DataFrame([row for run in runs for row in run_rows(run)])
    if df.empty:
        raise BenchError("the run directories hold no finished samples")
    df = df.reindex(columns=[c for c in COLUMNS if c in df.columns and df[c].notna().any() or c == "flag"])
    flagged = df["flag"] != ""
    df.loc[flagged, [c for c in SPEED if c in df.columns]] = np.nan
    return df.sort_values(["task", "model", "dtype", "category", "method", "settings"], kind="stable")


def markdown(df: pd.DataFrame) -> str:
    """The readable subset of the table as markdown."""
    cols = ["model", "method", "settings", "task", "category", "samples", "tokens_per_s", "speedup"]
    cols += ["speedup_ci_low", "speedup_ci_high", "tau", "overhead", "exact_rate", "tpot_ms_median", "encode_ms_median"]
    cols += [c for c in df.columns if c.split("_delta")[0] in QUALITY] + ["flag"]
    view = df[[c for c in cols if c in df.columns]].copy()
    if "speedup_ci_low" in view:
        ci = view.pop("speedup_ci_low").map("{:.2f}".format) + "–" + view.pop("speedup_ci_high").map("{:.2f}".format)
        view.insert(view.columns.get_loc("speedup") + 1, "95% CI (mean)", ci.where(ci != "nan–nan", ""))
    return view.astype(object).where(view.notna(), "").to_markdown(index=False, floatfmt=".3g")


def load_reference(path: Path = REFERENCE) -> pd.DataFrame:
    """Published numbers: one row per (paper, model, hardware, task, category, method, settings, metric)."""
    return pd.read_csv(path, keep_default_na=False, dtype={"claimed": float})


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
