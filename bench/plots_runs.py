"""Figures drawn from the runs' per-step records: tokens committed per target forward, and per-token latency
(one box per run, never merged)."""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.plot_style import Palette, natural_key, run_label, run_model  # noqa: E402
from bench.report import Run, settings_label, task_label  # noqa: E402
from core.files import portable  # noqa: E402


def _palette(runs: list[Run], palette: Palette | None) -> Palette:
    return palette or Palette((r.config["method"], settings_label(r.config, brief=True)) for r in runs)


def tokens_per_step(runs: list[Run], palette: Palette | None = None, cap: int = 10) -> plt.Figure | None:
    """Share of target forwards that committed 1, 2, ... (cap or more) tokens: one small panel per method run
    (prefill excluded), in its method's colour, grouped by model and task."""
    ordered = sorted(runs, key=lambda r: (run_model(r), task_label(r.config), natural_key(run_label(r))))
    lanes = [(r, [a for rec in r.method for a in rec["accepted"][1:]]) for r in ordered if r.config["method"] != "ar"]
    lanes = [(r, steps) for r, steps in lanes if steps]
    if not lanes:
        return None
    palette = _palette(runs, palette)
    cols = min(4, len(lanes))
    rows = -(-len(lanes) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, (run, steps) in zip(axes.flat, lanes, strict=False):
        counts = np.bincount(np.minimum(steps, cap), minlength=cap + 1)[1:]
        colour = palette.colour(run.config["method"], settings_label(run.config, brief=True))
        ax.bar(range(1, cap + 1), counts / counts.sum(), color=colour)
        ax.set_title("\n".join(textwrap.wrap(run_label(run), 42)), fontsize=7)
        ax.set_xticks(range(1, cap + 1), [*map(str, range(1, cap)), f"{cap}+"], fontsize=7)
        ax.text(0.97, 0.93, f"n={len(steps)} forwards", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    for ax in axes.flat[len(lanes) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("tokens per forward", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of forwards", fontsize=8)
    fig.suptitle("tokens committed per target forward")
    return fig


def _per_token_ms(records: list[dict[str, Any]]) -> list[float]:
    """Each step's time over the tokens it committed, in ms (the first token's prefill excluded)."""
    return [1e3 * s / a for r in records for s, a in zip(r["step_s"], r["accepted"][1:], strict=False) if a]


def latency_lanes(runs: list[Run]) -> list[tuple[str, str, str, list[float]]]:
    """(label, method, brief settings, ms per token) of every run's method records and of every AR baseline a
    run holds itself (a shared baseline is its own `ar` run); labels that would collide name their run."""
    lanes = []
    for run in runs:
        brief = settings_label(run.config, brief=True)
        key = (run_model(run), task_label(run.config))
        if run.method:
            lanes.append((*key, 1, run.config["method"], brief, run_label(run), run, _per_token_ms(run.method)))
        if run.baseline and not run.config.get("baseline_run"):
            lanes.append((*key, 0, "ar", "", run_label(run, baseline=True), run, _per_token_ms(run.baseline)))
    lanes = [lane for lane in lanes if lane[-1]]
    lanes.sort(key=lambda lane: (lane[0], lane[1], lane[2], lane[3], natural_key(lane[4])))
    seen = Counter(lane[5] for lane in lanes)
    return [(f"{label} [{portable(run.root)}]" if seen[label] > 1 else label, method, brief, values)
            for *_, method, brief, label, run, values in lanes]  # fmt: skip


def token_latency(runs: list[Run], palette: Palette | None = None) -> plt.Figure | None:
    """Per-token latency after the first token, one box per run (and per AR baseline a run holds itself),
    labelled model · method · settings · task, grouped by model and task."""
    lanes = latency_lanes(runs)
    if not lanes:
        return None
    palette = _palette(runs, palette)
    labels = [label for label, *_ in lanes]
    width = 6 + 0.055 * max(map(len, labels))  # room for the longest label beside the plot
    fig, ax = plt.subplots(figsize=(width, 0.38 * len(lanes) + 1.6), layout="constrained")
    boxes = ax.boxplot(
        [values for *_, values in lanes], orientation="horizontal", showfliers=False, patch_artist=True,
        medianprops={"color": "black"}, widths=0.6,
    )  # fmt: skip
    for box, (_, method, brief, _) in zip(boxes["boxes"], lanes, strict=True):
        box.set_facecolor(palette.colour(method, brief))
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.invert_yaxis()  # the first run on top
    ax.set_xlim(left=0)
    ax.grid(axis="x", lw=0.4, alpha=0.5)
    ax.set_xlabel("ms per generated token (after the first)")
    ax.set_title("per-token latency per run (boxes: quartiles; whiskers: 1.5 IQR; outliers hidden)", fontsize=10)
    return fig
