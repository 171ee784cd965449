"""The report's figures (matplotlib, PNG): speedup by task and method, speed against quality, tokens per step,
per-token latency, and speedup across a sweep's settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.report import Run, quality_metrics, settings_label, target_generates, task_label  # noqa: E402


def _label(row: pd.Series) -> str:
    return f"{row['method']} {row.get('brief', row['settings'])}".strip()


def _where(row: pd.Series) -> str:
    return row["task"] if row["category"] == "all" else f"{row['task']}/{row['category']}"


def _save(fig: plt.Figure, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def speedup_by_task(df: pd.DataFrame, path: Path) -> Path | None:
    """Grouped bars: speedup over AR per task (and Spec-Bench category), one bar per method setting, with the
    bootstrap 95% interval of the per-sample mean; one panel per model (the Lookahead Fig. 5 / Spec-Bench view)."""
    rows = df[(df["method"] != "ar") & df["speedup"].notna()]
    if rows.empty:
        return None
    rows = rows.assign(where=rows.apply(_where, axis=1), label=rows.apply(_label, axis=1))
    rows = rows.drop_duplicates(["model", "where", "label"], keep="last")  # a repeated run: its latest row
    models = list(dict.fromkeys(rows["model"]))
    fig, axes = plt.subplots(len(models), 1, figsize=(11, 5.2 * len(models)), squeeze=False, layout="constrained")
    for ax, model in zip(axes[:, 0], models, strict=True):
        sub = rows[rows["model"] == model]
        wheres = list(dict.fromkeys(sub["where"]))
        labels = list(dict.fromkeys(sub["label"]))
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            mine = sub[sub["label"] == label]
            x = np.array([wheres.index(w) for w in mine["where"]]) + (i - (len(labels) - 1) / 2) * width
            ax.bar(x, mine["speedup"], width, label=label)
            if "speedup_ci_low" in mine:
                bounds = np.vstack([mine["speedup_ci_low"], mine["speedup_ci_high"]])
                err = np.abs(bounds - mine["speedup_mean"].to_numpy())
                ax.errorbar(x, mine["speedup_mean"], yerr=err, fmt="none", ecolor="black", capsize=2, lw=0.8)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        crowded = sum(map(len, wheres)) > 90  # long task labels side by side would overlap
        ax.set_xticks(range(len(wheres)), wheres, rotation=12 if crowded else 0, ha="right" if crowded else "center")
        ax.set_ylabel("speedup over AR")
        ax.set_title(f"{model}: speedup by task (bars: ratio of totals; whiskers: 95% CI of the per-sample mean)")
        ax.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.2 if crowded else -0.08))
    return _save(fig, path)


def speed_vs_quality(df: pd.DataFrame, path: Path) -> Path | None:
    """Speedup against the quality change vs. the target's own AR output, for lossy rows (methods that do not
    generate with the target, and sampling); lossless greedy rows sit at zero by construction."""
    deltas = [f"{q}_delta" for q in quality_metrics() if f"{q}_delta" in df]
    lossy = df["settings"].fillna("").str.contains("T=") | ~df["method"].map(target_generates)
    rows = df[(df["method"] != "ar") & df["speedup"].notna() & lossy]
    rows = rows[rows[deltas].notna().any(axis=1)] if deltas else rows.iloc[0:0]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for _, row in rows.iterrows():
        metric = next(d for d in deltas if pd.notna(row[d]))
        ax.scatter(row["speedup"], row[metric], s=30)
        text = "\n".join(textwrap.wrap(f"{_label(row)} ({_where(row)}, {metric.removesuffix('_delta')})", 36))
        ax.annotate(text, (row["speedup"], row[metric]), fontsize=7, xytext=(-4, 4), textcoords="offset points",
                    ha="right", va="bottom")  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(min(0.9, rows["speedup"].min() * 0.8), rows["speedup"].max() * 1.1)
    ax.set_xlabel("speedup over AR")
    ax.set_ylabel("quality delta vs. AR (points)")
    ax.set_title("speed against quality")
    return _save(fig, path)


def tokens_per_step(runs: list[Run], path: Path, cap: int = 10) -> Path | None:
    """Share of target forwards that committed 1, 2, ... (cap or more) tokens: one small panel per method run
    (prefill excluded)."""
    lanes = [(r, [a for rec in r.method for a in rec["accepted"][1:]]) for r in runs if r.config["method"] != "ar"]
    lanes = [(r, steps) for r, steps in lanes if steps]
    if not lanes:
        return None
    cols = min(4, len(lanes))
    rows = -(-len(lanes) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, (run, steps) in zip(axes.flat, lanes, strict=False):
        counts = np.bincount(np.minimum(steps, cap), minlength=cap + 1)[1:]
        ax.bar(range(1, cap + 1), counts / counts.sum(), color="tab:blue")
        ax.set_title("\n".join(textwrap.wrap(_run_label(run), 40)), fontsize=7)
        ax.set_xticks(range(1, cap + 1), [*map(str, range(1, cap)), f"{cap}+"], fontsize=7)
    for ax in axes.flat[len(lanes) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("tokens per forward", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of forwards", fontsize=8)
    fig.suptitle("tokens committed per target forward")
    return _save(fig, path)


def token_latency(runs: list[Run], path: Path) -> Path | None:
    """Per-token latency after the first token (each step's time over the tokens it committed), per run."""
    data, labels = [], []
    for run in runs:
        for role, records in (("method", run.method), ("baseline", run.baseline)):
            if role == "baseline" and (run.config.get("baseline_run") or not records):
                continue
            values = [
                1e3 * s / a for rec in records for s, a in zip(rec["step_s"], rec["accepted"][1:], strict=False) if a
            ]
            label = (
                _run_label(run)
                if role == "method"
                else f"ar ({task_label(run.config)}, {Path(run.config['model']).name})"
            )
            if values and label not in labels:  # one box per label: repeated runs show their first
                data.append(values)
                labels.append(label)
    if not data:
        return None
    width = 6 + 0.055 * max(map(len, labels))  # room for the longest label beside the plot
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(data) + 1.5), layout="constrained")
    ax.boxplot(data, orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_xlabel("ms per generated token (after the first)")
    ax.set_title("per-token latency (boxes: quartiles; whiskers: 1.5 IQR)")
    return _save(fig, path)


def sweep(df: pd.DataFrame, path: Path) -> Path | None:
    """Speedup and tau across the settings of each (model, task, method) that was run with several settings."""
    rows = df[(df["method"] != "ar") & (df["category"] == "all") & df["speedup"].notna()]
    groups = [(k, g) for k, g in rows.groupby(["model", "task", "method"]) if g["settings"].nunique() > 1]
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 3.6 * len(groups)), squeeze=False)
    for ax, ((model, task, method), g) in zip(axes[:, 0], groups, strict=True):
        g = g.drop_duplicates("settings", keep="last").sort_values("tau")
        ticks = g["brief"] if "brief" in g else g["settings"]
        x = range(len(g))
        ax.plot(x, g["speedup"], marker="o", label="speedup")
        ax.plot(x, g["tau"], marker="s", ls=":", label="tau (tokens / forward)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(list(x), ticks, rotation=15, ha="right", fontsize=8)
        ax.set_title(f"{method} on {task} ({model})")
        ax.set_ylabel("ratio")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _run_label(run: Run) -> str:
    where = f"{task_label(run.config)}, {Path(run.config['model']).name}"
    return f"{run.config['method']} {settings_label(run.config, brief=True)} ({where})".replace("  ", " ")


def all_plots(df: pd.DataFrame, runs: list[Run], out: Path) -> list[Path]:
    """Write every figure that has data; returns the files written."""
    made = [
        speedup_by_task(df, out / "speedup_by_task.png"),
        speed_vs_quality(df, out / "speed_vs_quality.png"),
        tokens_per_step(runs, out / "tokens_per_step.png"),
        token_latency(runs, out / "token_latency.png"),
        sweep(df, out / "sweep.png"),
    ]
    return [p for p in made if p is not None]
