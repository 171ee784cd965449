"""The report's figures (PNG, PDF or SVG): speedup by task and method, speedup against tau with lines of equal
overhead, speed against quality, a sweep's settings, tokens per step and per-token latency (`bench.plots_runs`).
One colour per method, shades per setting, in every figure (`bench.plot_style`)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from bench.plot_style import Palette, check_format, join, natural_key, row_label, where  # noqa: E402
from bench.plots_runs import token_latency, tokens_per_step  # noqa: E402
from bench.report import Run, quality_metrics, target_generates  # noqa: E402

MARKERS = "osD^vP*Xh<>p"
OVERHEADS = (1.0, 1.25, 1.5, 2.0, 3.0)  # the iso-overhead lines of speedup_vs_tau (more are added where needed)
CI_TEXT = "bars: speedup (ratio of totals); whiskers: 95% CI; n: paired prompts"


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write and close a figure; PDF and SVG keep their text as text and carry no date (same runs, same file)."""
    meta = {} if path.suffix == ".png" else {"Date": None} if path.suffix == ".svg" else {"CreationDate": None}
    with plt.rc_context({"svg.hashsalt": "decodebench", "svg.fonttype": "none", "pdf.fonttype": 42}):
        fig.savefig(path, dpi=130, metadata=meta)
    plt.close(fig)
    return path


def _speed_rows(df: pd.DataFrame, categories: bool = True) -> pd.DataFrame:
    """Rows with a speedup (not the baseline's own rows), with their panel (the model, and the dtype where a
    model was run in several), place (task[/category]), label and palette key."""
    rows = df[(df["method"] != "ar") & df["speedup"].notna()]
    rows = rows if categories else rows[rows["category"] == "all"]
    if rows.empty:
        return rows
    dtypes = rows.groupby("model")["dtype"].transform("nunique") if "dtype" in rows else pd.Series(1, rows.index)
    panel = rows["model"].where(dtypes < 2, rows["model"] + " (" + rows.get("dtype", "") + ")")
    brief = (rows["brief"] if "brief" in rows else rows["settings"]).fillna("")
    rows = rows.assign(panel=panel, place=rows.apply(where, axis=1), brief=brief, label=rows.apply(row_label, axis=1))
    order = sorted(set(zip(rows["method"], rows["brief"], strict=True)), key=lambda k: (k[0], natural_key(k[1])))
    return rows.assign(rank=[order.index(k) for k in zip(rows["method"], rows["brief"], strict=True)])


def _whisker(ax: plt.Axes, x: float, row: pd.Series, colour: str = "black") -> float:
    """The 95% interval of a row's speedup as a whisker at `x`; returns the top of bar and whisker."""
    low, high = row.get("speedup_ci_low"), row.get("speedup_ci_high")
    if pd.isna(low) or pd.isna(high):
        return row["speedup"]
    ax.errorbar(x, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor=colour, capsize=3, lw=0.9)
    return max(row["speedup"], high)


def _n(row: pd.Series) -> int:
    """The prompts a row's speedup is computed on."""
    paired = row.get("paired_prompts")
    return int(row["samples"] if paired is None or pd.isna(paired) or not paired else paired)


def _bar(ax: plt.Axes, x: float, width: float, row: pd.Series, colour: str, shown: set[object]) -> None:
    """One bar of a speedup with its whisker centred on it and its n above; a repeat of a run already drawn in
    the same place is hatched."""
    repeat = (row["place"], row["label"]) in shown
    label = row["label"] + (" (repeated run)" if repeat else "")
    ax.bar(x, row["speedup"], width, color=colour, hatch="///" if repeat else None, edgecolor="white",
           label="_nolegend_" if label in shown else label)  # fmt: skip
    shown |= {label, (row["place"], row["label"])}
    top = _whisker(ax, x, row)
    ax.annotate(f"n={_n(row)}", (x, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                fontsize=6, rotation=90 if width < 0.12 else 0)  # fmt: skip


def _grouped_bars(ax: plt.Axes, rows: pd.DataFrame, palette: Palette) -> list[str]:
    """Bars per place, each place holding only the settings run there; returns the places."""
    places = list(dict.fromkeys(rows["place"]))
    width = min(0.8 / rows.groupby("place").size().max(), 0.2)
    shown: set[object] = set()  # legend labels, and (place, label) of the bars drawn
    for i, place in enumerate(places):
        here = rows[rows["place"] == place].sort_values("rank", kind="stable")
        for j, (_, row) in enumerate(here.iterrows()):
            x = i + (j - (len(here) - 1) / 2) * width
            _bar(ax, x, width, row, palette.colour(row["method"], row["brief"]), shown)
    return places


def speedup_by_task(df: pd.DataFrame, palette: Palette | None = None) -> plt.Figure | None:
    """Grouped bars: speedup over AR per task (and category), one bar per method setting with its 95% interval
    and sample count; one panel per model (the Lookahead Fig. 5 / Spec-Bench view)."""
    rows = _speed_rows(df)
    if rows.empty:
        return None
    palette = palette or Palette.of(df)
    panels = list(dict.fromkeys(rows["panel"]))
    entries = [rows.loc[rows["panel"] == p, "label"].nunique() for p in panels]
    heights = [4.4 + 0.17 * -(-n // 2) for n in entries]  # the axes, then the legend's rows of two entries
    fig, axes = plt.subplots(len(panels), 1, figsize=(15, sum(heights)), height_ratios=heights, squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        places = _grouped_bars(ax, rows[rows["panel"] == panel], palette)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        crowded = sum(map(len, places)) > 90  # long task labels side by side would overlap
        ax.set_xticks(range(len(places)), places, rotation=12 if crowded else 0, ha="right" if crowded else "center")
        ax.set(xlim=(-0.5, len(places) - 0.5), ylim=(0, ax.get_ylim()[1] * 1.08), ylabel="speedup over AR")
        ax.set_title(f"{panel}: speedup by task ({CI_TEXT})", fontsize=10)
        ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.2 if crowded else -0.08))
    return fig


def _iso_overhead(ax: plt.Axes, overheads: list[float], xmax: float, ymax: float) -> None:
    """Dashed lines speedup = tau / c, each labelled along itself near where it leaves the plot."""
    xs = np.linspace(0, xmax, 50)
    for c in overheads:
        ax.plot(xs, xs / c, ls="--", lw=0.7, color="grey", zorder=0)
        x = min(xmax, c * ymax) * 0.93
        ax.text(x, x / c, f"c={c:g}", fontsize=7, color="dimgrey", ha="center", va="bottom", rotation_mode="anchor",
                rotation=np.degrees(np.arctan2(1, c)), transform_rotates_text=True)  # fmt: skip


def _tau_panel(
    ax: plt.Axes, sub: pd.DataFrame, palette: Palette, places: list[str], overheads: list[float]
) -> dict[str, Patch]:
    """One model's points (colour: setting, marker: task) over the iso-overhead lines; returns legend handles."""
    handles = {}
    for _, row in sub.sort_values("rank").iterrows():
        colour = palette.colour(row["method"], row["brief"])
        marker = MARKERS[places.index(row["place"]) % len(MARKERS)]
        _whisker(ax, row["tau"], row, colour)
        ax.scatter(row["tau"], row["speedup"], color=colour, marker=marker, s=42, edgecolor="black", lw=0.4)
        handles[row["label"]] = Patch(color=colour, label=row["label"])
    xmin, xmax = 0.85 * min(sub["tau"].min(), 1.0), sub["tau"].max() * 1.1 + 0.1
    ymax = max(sub["speedup"].max(), sub.get("speedup_ci_high", sub["speedup"]).max()) * 1.12
    _iso_overhead(ax, overheads, xmax, ymax)
    ax.axhline(1.0, color="black", lw=0.6, ls=":")
    ax.set(xlim=(xmin, xmax), ylim=(0, ymax), xlabel="tau (tokens per target forward)", ylabel="speedup over AR")
    return handles


def speedup_vs_tau(df: pd.DataFrame, palette: Palette | None = None) -> plt.Figure | None:
    """Speedup against tau (tokens per target forward), one panel per model, with dashed lines of equal overhead
    c (speedup = tau / c, c: the time of a method step over an AR step): a method wins where its tau outgrows its
    overhead. Colour: method and setting; marker: task."""
    rows = _speed_rows(df, categories=False)
    rows = rows[rows["tau"].notna()] if not rows.empty else rows
    if rows.empty:
        return None
    palette = palette or Palette.of(df)
    overhead = rows["tau"] / rows["speedup"]
    overheads = sorted({*OVERHEADS, *([0.5] if overhead.min() < 0.9 else []), *([4.0] if overhead.max() > 3.3 else [])})
    panels, places = list(dict.fromkeys(rows["panel"])), list(dict.fromkeys(rows["place"]))
    cols = min(2, len(panels))
    nrows = -(-len(panels) // cols)
    legend_rows = -(-rows["label"].nunique() // cols)  # the method legend below the panels
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols + 2, 5 * nrows + 0.2 * legend_rows + 0.6), squeeze=False,
                             layout="constrained")  # fmt: skip
    handles: dict[str, Patch] = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        handles |= _tau_panel(ax, rows[rows["panel"] == panel], palette, places, overheads)
        ax.set_title(f"{panel}: speedup against tau", fontsize=10)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    marks = [MARKERS[i % len(MARKERS)] for i in range(len(places))]
    tasks = [Line2D([], [], color="grey", marker=m, ls="", label=p) for m, p in zip(marks, places, strict=True)]
    fig.legend(
        handles=list(handles.values()), loc="outside lower center", ncols=cols, fontsize=8, title="method · setting"
    )
    fig.legend(handles=tasks, loc="outside right center", fontsize=8, title="task")
    fig.suptitle("speedup = tau / c; dashed: equal overhead c (a method step's time over an AR step's)\n"
                 "whiskers: 95% CI", fontsize=10)  # fmt: skip
    return fig


def speed_vs_quality(df: pd.DataFrame, palette: Palette | None = None) -> plt.Figure | None:
    """Speedup against the quality change vs. the target's own AR output, for lossy rows (methods that do not
    generate with the target, and sampling); lossless greedy rows sit at zero by construction."""
    deltas = [f"{q}_delta" for q in quality_metrics() if f"{q}_delta" in df]
    lossy = df["settings"].fillna("").str.contains("T=") | ~df["method"].map(target_generates)
    rows = _speed_rows(df[lossy])
    rows = rows[rows[deltas].notna().any(axis=1)] if deltas and not rows.empty else rows.iloc[0:0]
    if rows.empty:
        return None
    palette = palette or Palette.of(df)
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for _, row in rows.iterrows():
        metric = next(d for d in deltas if pd.notna(row[d]))
        ax.scatter(row["speedup"], row[metric], s=36, color=palette.colour(row["method"], row["brief"]))
        text = join(row["model"], row["label"], row["place"], metric.removesuffix("_delta"))
        ax.annotate("\n".join(textwrap.wrap(text, 40)), (row["speedup"], row[metric]), fontsize=7, xytext=(-4, 4),
                    textcoords="offset points", ha="right", va="bottom")  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlim(min(0.9, rows["speedup"].min() * 0.8), rows["speedup"].max() * 1.1)
    ax.set_xlabel("speedup over AR")
    ax.set_ylabel("quality delta vs. AR (points)")
    ax.set_title("speed against quality")
    return fig


def _options(settings: str) -> dict[str, str]:
    """A settings text as a dict: W=5 N=3 draft=x -> {"W": "5", "N": "3", "draft": "x"}."""
    return dict(p.split("=", 1) for p in str(settings).split() if "=" in p)


def numeric_axis(settings: list[str]) -> tuple[str, list[float]] | None:
    """The one numeric axis a group of settings lies on: the first option that varies and its values, when every
    option that varies is a number and they all rise together; None when the settings are categories."""
    parsed = [_options(s) for s in settings]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1]
    number = re.compile(r"-?\d+(\.\d+)?([eE]-?\d+)?")
    if not varying or not all(number.fullmatch(p.get(k) or "") for p in parsed for k in varying):
        return None
    values = {k: [float(p[k]) for p in parsed] for k in varying}
    order = np.argsort(values[varying[0]], kind="stable")
    rising = all(np.all(np.diff(np.asarray(v)[order]) >= 0) for v in values.values())
    distinct = len(set(values[varying[0]])) == len(parsed)
    name = varying[0] + (f" (with {', '.join(varying[1:])})" if len(varying) > 1 else "")
    return (name, values[varying[0]]) if rising and distinct else None


def _sweep_panels(axes: np.ndarray, g: pd.DataFrame, palette: Palette) -> None:
    """Speedup (with whiskers and n) and tau of one sweep: lines over a numeric setting, else bars per setting."""
    axis = numeric_axis(list(g["settings"]))
    if axis:
        g = g.assign(x=axis[1]).sort_values("x")
        colours = [palette.colour(m, b) for m, b in zip(g["method"], g["brief"], strict=True)]
        xs, colour = list(g["x"]), palette.colour(g["method"].iloc[0], "")
        for ax, column in zip(axes, ("speedup", "tau"), strict=True):
            ax.plot(xs, g[column], color=colour, lw=1.2, zorder=1)
            ax.scatter(xs, g[column], color=colours, edgecolor="black", lw=0.4, zorder=2)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlabel(axis[0])
    else:
        g = g.sort_values("rank", kind="stable")
        colours = [palette.colour(m, b) for m, b in zip(g["method"], g["brief"], strict=True)]
        xs = list(range(len(g)))
        for ax, column in zip(axes, ("speedup", "tau"), strict=True):
            ax.bar(xs, g[column], 0.6, color=colours)
            ax.set_xticks(xs, ["\n".join(textwrap.wrap(b, 24)) for b in g["brief"]], fontsize=7)
    for x, (_, row) in zip(xs, g.iterrows(), strict=True):
        top = _whisker(axes[0], x, row)
        axes[0].annotate(f"n={_n(row)}", (x, top), xytext=(0, 2), textcoords="offset points", ha="center",
                         va="bottom", fontsize=6)  # fmt: skip
    for ax, label in zip(axes, ("speedup over AR", "tau (tokens / forward)"), strict=True):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set(ylabel=label, ylim=(0, ax.get_ylim()[1] * 1.1))


def sweep(df: pd.DataFrame, palette: Palette | None = None) -> plt.Figure | None:
    """Speedup (left) and tau (right) across the settings of each (model, task, method) run with several:
    numeric settings as lines, categorical ones as bars."""
    rows = _speed_rows(df, categories=False)
    keys = [k for k in ("panel", "task", "method") if k in rows]
    groups = [(k, g.drop_duplicates("settings", keep="last")) for k, g in rows.groupby(keys)] if len(rows) else []
    groups = [(k, g) for k, g in groups if len(g) > 1]
    if not groups:
        return None
    palette = palette or Palette.of(df)
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.8 * len(groups)), squeeze=False, layout="constrained")
    for row_axes, ((panel, task, method), g) in zip(axes, groups, strict=True):
        _sweep_panels(row_axes, g, palette)
        row_axes[0].set_title(f"{method} on {task} ({panel}): speedup", fontsize=10)
        row_axes[1].set_title(f"{method} on {task} ({panel}): tau", fontsize=10)
    fig.suptitle("settings sweeps (whiskers: 95% CI; n: paired prompts)")
    return fig


def all_plots(df: pd.DataFrame, runs: list[Run], out: Path, fmt: str = "png") -> list[Path]:
    """Write every figure that has data, as `fmt` (png, pdf or svg); returns the files written."""
    check_format(fmt)
    palette = Palette.of(df, runs)
    figures = [("speedup_by_task", speedup_by_task, df), ("speedup_vs_tau", speedup_vs_tau, df),
               ("speed_vs_quality", speed_vs_quality, df), ("tokens_per_step", tokens_per_step, runs),
               ("token_latency", token_latency, runs), ("sweep", sweep, df)]  # fmt: skip
    made = []
    for name, make, data in figures:
        fig = make(data, palette)
        if fig is not None:
            made.append(_save(fig, out / f"{name}.{fmt}"))
    return made
