"""`bench report`: one table from many run directories, impossible numbers flagged.

A row is one (run, category): the method's records paired with the AR baseline's records on the same prompt ids
(from the same run directory, or from the shared `ar` run a sweep points to), aggregated by `bench.records`.
Quality columns are the metrics the tasks declare. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.records import MIN_CI_PROMPTS, SPEED, aggregate
from bench.store import MANIFEST, SAMPLES, SUMMARY, read_samples
from core.costmodel import CostCurve, ProfileKey, measured_decode_speedup, predicted_speedup, stored
from core.errors import BenchError
from core.files import portable, read_json
from core.metrics import Metric
from core.presets import PRESETS
from methods.base import METHODS
from tasks.base import TASKS


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


def load_run(root: Path) -> Run:
    """Read a run directory; the baseline records come from the run itself or from its shared `ar` run."""
    manifest = read_json(root / MANIFEST)
    if "config" not in manifest:
        raise BenchError(f"{root / MANIFEST}: no config; not a bench run directory")
    config = manifest["config"]
    records, _ = read_samples(root / SAMPLES)
    environment = manifest.get("environment", {})
    baseline, baseline_kind = [r for r in records if r["role"] == "baseline"], environment.get("node_kind")
    if config.get("baseline_run"):
        shared = (root / config["baseline_run"]).resolve()
        if not (shared / MANIFEST).exists():
            raise BenchError(f"{root}: its baseline run {shared} is missing")
        baseline = [r for r in read_samples(shared / SAMPLES)[0] if r["role"] == "baseline"]
        baseline_kind = read_json(shared / MANIFEST).get("environment", {}).get("node_kind")
    summaries = read_json(root / SUMMARY) if (root / SUMMARY).exists() else []
    method = [r for r in records if r["role"] == "method"]
    return Run(root, config, environment, method, baseline, summaries, baseline_kind)


def failed_cells(paths: list[Path]) -> list[tuple[str, str]]:
    """(cell, reason) of every cell a sweep under `paths` recorded as failed in its sweep.json."""
    out = []
    for path in paths:
        for status_file in [path / "sweep.json"] if (path / "sweep.json").exists() else path.rglob("sweep.json"):
            cells = read_json(status_file).get("cells", {}).items()
            out += [(str(status_file.parent / k), c.get("reason", "")) for k, c in cells if c["status"] != "done"]
    return out


def settings_label(config: dict[str, Any], brief: bool = False) -> str:
    """The method's resolved settings in the papers' words: "W=5 N=3 G=5 prompt_ngrams=False ...", "k=4 ...
    draft=...", "T=0.7"; options in the order of the method's schema, each under its label. `brief` (figures):
    the options with a paper label (W, N, G, k, candidates) and the others only where they are not the default."""
    options = config.get("options", {})
    try:
        schema = METHODS.get(config["method"]).Options
        specs, unread = {s.name: s for s in schema.specs()}, schema.unread(options)
    except BenchError:  # a method this installation does not have (a plugin): its option names as they are
        specs, unread = {}, set()
    order = [n for n in specs if n in options and n not in unread] + sorted(set(options) - set(specs))
    if brief:
        order = [n for n in order if n not in specs or specs[n].label != n or options[n] != specs[n].default]
    parts = [f"{specs[k].label if k in specs else k}={options[k]}" for k in order]
    if config.get("draft"):
        parts.append(f"draft={config['draft']}")
    if config.get("temperature"):
        parts.append(f"T={config['temperature']}")
    if config.get("compile"):
        parts.append("compiled")
    if config.get("kernels", "aten") != "aten":
        parts.append(f"kernels={config['kernels']}")
    parts += [f"{k}={config[k]}" for k in ("quant", "draft_quant") if config.get(k, "none") != "none"]
    if config.get("batch_size", 1) > 1:
        parts.append(f"batch={config['batch_size']}")
    return " ".join(parts)


def task_label(config: dict[str, Any]) -> str:
    """The task and its option values: "wmt:newstest2014", "specbench:translation", "mtbench"; a value that is not
    a name with its option's name: "specbench:per_group=4"."""
    options = (config.get("task_options") or {}).items()
    values = [v if isinstance(v, str) else f"{k}={v}" for k, v in options if v is not None]
    return ":".join([config["task"], *values])


def model_id(config: dict[str, Any]) -> str:
    """The model's hub id where known (presets and hub runs), else its spec."""
    spec = config["model"]
    preset = PRESETS.get(spec)
    return preset.hub_id if preset and preset.hub_id else Path(spec).name


def quality_metrics() -> dict[str, Metric]:
    """Every quality metric the registered tasks declare, by name."""
    return {m.name: m for _, task in TASKS for m in task.metrics}


def flags(row: dict[str, Any], expect_baseline: bool) -> list[str]:
    """Why a row's numbers cannot be true, by counting (empty when they can): its speed numbers are blanked."""
    out = []
    if row["tau"] < 1 - 1e-9:
        out.append(f"tau {row['tau']:.3f} below 1")
    if expect_baseline and not row.get("paired_samples"):
        out.append("no baseline samples to compute a speedup on")
    return out


def warnings(row: dict[str, Any]) -> list[str]:
    """What makes a row's numbers doubtful but not impossible (they are kept): a speed above the roofline, whose
    bandwidth is itself a noisy run-time estimate; an interval over too few prompts."""
    out = []
    roofline = row.get("roofline_tokens_per_s")
    if roofline and target_generates(row["method"]) and row["tokens_per_s"] > roofline * max(row["tau"], 1.0):
        out.append(
            f"{row['tokens_per_s']:.1f} tok/s above the estimated roofline ({roofline * max(row['tau'], 1):.1f})"
        )
    predicted, decode = row.get("speedup_predicted"), row.get("speedup_decode")
    if predicted and decode and decode < predicted * (1 - PREDICTION_GAP):
        out.append(f"the cost curve predicts {predicted:.2f}x in decode, measured {decode:.2f}x: "
                   f"{1 - decode / predicted:.0%} lost outside the target's forwards")  # fmt: skip
    if row.get("speedup") is not None and row.get("paired_prompts", 0) < MIN_CI_PROMPTS:
        out.append(f"interval over {row['paired_prompts']} prompts only")
    return out


PREDICTION_GAP = 0.25  # a measured decode speedup this far below the cost curve's prediction is flagged


def cost_curves(run: Run) -> tuple[CostCurve | None, CostCurve | None]:
    """The stored cost curves (`bench profile`) of the run's target and draft under its settings: model, dtype,
    device type, compile, threads and kernels. None where that setting was never profiled."""
    config, env = run.config, run.environment
    device = str(env.get("device") or config.get("device", "cpu")).split(":")[0]
    threads = env.get("torch_threads")

    def curve(model: str | None) -> CostCurve | None:
        if not model or threads is None:
            return None
        key = ProfileKey(Path(model).name, config["dtype"], device, bool(config.get("compile")), int(threads))
        return stored(key, config.get("kernels", "aten"))

    return curve(config["model"]), curve(config.get("draft"))


def prediction(curves: tuple[CostCurve | None, CostCurve | None], records: list[dict[str, Any]],
               paired: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The measured decode-phase speedup (after the first token) and, with a cost curve, the one it predicts."""
    by_id = {r["prompt_id"]: r for r in paired}
    pairs = [(r, by_id[r["prompt_id"]]) for r in records if r["prompt_id"] in by_id]
    if not pairs:
        return {}
    out = {"speedup_decode": measured_decode_speedup(pairs)}
    if curves[0] is not None:
        out["speedup_predicted"] = predicted_speedup(pairs, *curves)
    return out


def target_generates(method: str) -> bool:
    """Whether the target model makes every forward (so the target's roofline bounds the speed)."""
    try:
        return METHODS.get(method).lossless
    except BenchError:  # a method this version does not know: assume the target's roofline applies
        return True


# Columns a run computes once per lane (summary.json), not from its records.
SUMMARY_ONLY = ("roofline_tokens_per_s", "roofline_fraction", "quant", "model_bytes", "peak_rss_mb",
                "peak_allocated_mb", "perplexity")  # fmt: skip


def _summary_columns(s: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Roofline and quality of a lane's summary.json row, and each quality metric's delta to the baseline."""
    out = {k: s.get(k) for k in SUMMARY_ONLY}
    if s.get("perplexity") is not None and base.get("perplexity") is not None:
        out["perplexity_delta"] = s["perplexity"] - base["perplexity"]
    for name in quality_metrics():
        if name in s:
            out[name] = s[name]
            if name in base:
                out[f"{name}_delta"] = s[name] - base[name]
    return out


def run_rows(run: Run) -> list[dict[str, Any]]:
    """The rows of one run: all samples, then each category when there are several; plus the baseline's row
    when the baseline lives in this run directory (a shared baseline is reported by its own `ar` run)."""
    config, env = run.config, run.environment
    summary = {s["role"]: s for s in run.summaries}
    common = {
        "model": Path(config["model"]).name, "model_id": model_id(config), "task": task_label(config),
        "dtype": config["dtype"], "device": env.get("device"), "device_name": env.get("device_name"),
        "torch": env.get("torch"), "transformers": env.get("transformers"), "commit": env.get("git_commit"),
        "run": portable(run.root), "draft": config.get("draft"), "temperature": config.get("temperature", 0.0),
    }  # fmt: skip
    lanes = [("method", config["method"], settings_label(config), settings_label(config, brief=True), run.method)]
    if run.baseline and not config.get("baseline_run"):
        batch = settings_label({"method": "ar", "batch_size": config.get("batch_size", 1)})  # its only setting
        lanes.append(("baseline", "ar", batch, batch, run.baseline))
    rows, curves = [], cost_curves(run)
    for role, method, settings, brief, records in lanes:
        categories = sorted({r.get("category") for r in records} - {None})
        groups = [("all", records)] + [(c, [r for r in records if r.get("category") == c]) for c in categories]
        for category, group in groups if len(categories) > 1 else groups[:1]:
            if not group:
                continue
            options = json.dumps(config.get("options", {}) if role == "method" else {}, sort_keys=True)
            row = common | {"method": method, "settings": settings, "brief": brief, "category": category}
            row |= {"options": options, "draft": common["draft"] if role == "method" else None}
            paired = run.baseline if role == "method" and run.same_hardware else []  # never the baseline with itself
            row |= aggregate(group, paired) | prediction(curves, group, paired)
            if category == "all":
                row |= _summary_columns(summary.get(role, {}), summary.get("baseline", {}))
            expect = role == "method" and config["method"] != "ar" and config.get("baseline", True)
            problems = flags(row, expect and run.same_hardware)
            if role == "method" and not run.same_hardware:
                problems.append(f"baseline timed on other hardware ({run.baseline_kind}); no speedup")
            rows.append(row | {"flag": "; ".join(problems), "warning": "; ".join(warnings(row))})
    return rows


LEAD = ["model", "method", "settings", "task", "category", "dtype", "samples", "tokens_per_s", "tokens_per_s_median",
        "speedup", "speedup_ci_low", "speedup_ci_high", "speedup_of_means", "speedup_mean", "speedup_time", "repeats",
        "speedup_repeat_mean", "speedup_repeat_std", "speedup_decode", "speedup_predicted", "tau", "acceptance_rate",
        "acceptance_by_position", "overhead", "exact_rate", "ttft_ms_median", "ttft_ms_p90", "tpot_ms_median",
        "tpot_ms_p90", "encode_ms_median", "e2e_ms_median", "quant", "model_bytes", "peak_rss_mb", "peak_allocated_mb",
        "perplexity", "perplexity_delta"]  # fmt: skip
TRAIL = ["roofline_tokens_per_s", "roofline_fraction", "baseline_tokens_per_s", "paired_samples", "paired_prompts",
         "new_tokens", "flag", "warning", "brief", "options", "draft", "temperature", "model_id", "device",
         "device_name", "torch", "transformers", "commit", "run"]  # fmt: skip


def table(runs: list[Run]) -> pd.DataFrame:
    """All rows of all runs; a flagged row keeps its reason, not its speed numbers."""
    df = pd.DataFrame([row for run in runs for row in run_rows(run)])
    if df.empty:
        raise BenchError("the run directories hold no finished samples")
    columns = LEAD + [c for q in quality_metrics() for c in (q, f"{q}_delta")] + TRAIL
    keep = {"flag", "warning"}
    df = df.reindex(columns=[c for c in columns if c in df.columns and df[c].notna().any() or c in keep])
    if "acceptance_by_position" in df:  # one cell: the rate at draft positions 1, 2, ...
        by_position = df["acceptance_by_position"]
        df["acceptance_by_position"] = by_position.map(lambda v: " ".join(f"{x:.3f}" for x in v), na_action="ignore")
    flagged = df["flag"] != ""
    df.loc[flagged, [c for c in SPEED if c in df.columns]] = np.nan
    return df.sort_values(["task", "model", "dtype", "category", "method", "settings"], kind="stable")


def _interval(row: pd.Series) -> str:
    """The speedup's 95% interval, with the number of prompts it rests on when that is small."""
    if pd.isna(row.get("speedup_ci_low")):
        return ""
    text = f"{row['speedup_ci_low']:.2f}–{row['speedup_ci_high']:.2f}"
    return text if row["paired_prompts"] >= MIN_CI_PROMPTS else f"{text} (n={int(row['paired_prompts'])}, few)"


def markdown(df: pd.DataFrame) -> str:
    """The readable subset of the table as markdown."""
    cols = ["model", "method", "settings", "task", "category", "samples", "tokens_per_s", "speedup"]
    cols += ["tau", "acceptance_rate", "overhead", "exact_rate", "tpot_ms_median", "encode_ms_median"]
    cols += [c for c in df.columns if c.split("_delta")[0] in quality_metrics()] + ["flag", "warning"]
    view = df[[c for c in cols if c in df.columns]].copy()
    at = view.columns.get_loc("speedup") + 1
    if "speedup_ci_low" in df:
        view.insert(at, "95% CI", df.apply(_interval, axis=1))
    if "speedup_repeat_mean" in df:
        spread = df["speedup_repeat_mean"].map("{:.3f}".format) + " ± " + df["speedup_repeat_std"].map("{:.3f}".format)
        view.insert(at, "over repeats", spread.where(df["speedup_repeat_mean"].notna(), ""))
    return view.astype(object).where(view.notna(), "").to_markdown(index=False, floatfmt=".3g")


def write_report(
    runs: list[Path], out: Path, against: list[str], plots: bool, echo: Callable[[str], None], fmt: str = "png"
) -> None:
    """summary.csv, summary.md, against-PAPER.csv and the figures (as `fmt`: png, pdf or svg) in `out`; the
    tables through `echo`."""
    from bench.against import against as join
    from bench.plot_style import check_format

    check_format(fmt)
    found = find_runs(runs)
    df = table(found)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "summary.csv", index=False)
    text = markdown(df)
    sections = [f"# decodebench report\n\n{len(found)} run directories.\n\n{text}\n"]
    echo(text)
    for row in df[df["flag"] != ""].itertuples():
        echo(f"flagged: {row.method} {row.settings} on {row.task} ({row.run}): {row.flag}")
    failed = failed_cells(runs)
    if failed:
        lines = [f"- {cell}: {reason}" for cell, reason in failed]
        sections.append("## Failed cells\n\n" + "\n".join(lines) + "\n")
        echo("failed cells:\n" + "\n".join(lines))
    for paper in against:
        joined = join(df, paper)
        joined.to_csv(out / f"against-{paper}.csv", index=False)
        joined_text = joined.astype(object).where(joined.notna(), "").to_markdown(index=False, floatfmt=".3g")
        sections.append(f"## Published ({paper}) vs. measured\n\n{joined_text}\n")
        echo(f"\n{paper}: published vs. measured\n{joined_text}")
    if plots:
        from bench.plots import all_plots

        made = all_plots(df, found, out, fmt)
        sections.append("## Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in made) + "\n")
    (out / "summary.md").write_text("\n".join(sections))
    echo(f"report: {out}")
