"""The report's figures on hand-made run directories (no model): every run drawn, whiskers on their own bars,
one colour per method in every figure, categories not joined by lines, no machine paths, and file formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from bench import report as rep
from bench.plot_style import Palette, clean, method_colour
from bench.plots import all_plots, numeric_axis, speedup_by_task, speedup_vs_tau, sweep
from bench.plots_runs import token_latency, tokens_per_step
from bench.store import MANIFEST, SAMPLES
from tests.test_cli import bench

ABSOLUTE = re.compile(r"(^|[\s=(\[:])/[A-Za-z]")


def record(role: str, method: str, pid: int, per_step: int, seconds: float) -> dict:
    """A finished generation of 1 + 6 * per_step tokens: a prefill, then 6 steps of `per_step` tokens each."""
    tokens, steps = 1 + 6 * per_step, [round(seconds / 7, 6)] * 6
    return {
        "role": role, "method": method, "prompt_id": str(pid), "sample_id": str(pid), "turn": 1, "category": None,
        "new_tokens": tokens, "target_forwards": 7, "tau": tokens / 7, "accepted": [1] + [per_step] * 6,
        "draft_forwards": 0, "ttft_s": seconds / 7, "encode_s": None, "total_s": seconds,
        "tpot_s": seconds * 6 / 7 / (tokens - 1), "tokens_per_s": tokens / seconds, "step_s": steps,
        "token_ids": [], "text": "", "exact": None, "first_divergence": None, "margin": None,
    }  # fmt: skip


def write_run(root: Path, model: str, task: str, method: str, options: dict, per_step: int, seconds: float,
              shared: bool = True, draft: str | None = None) -> None:  # fmt: skip
    """A run directory: the method's records, and either a pointer to the shared `ar` run or its own baseline."""
    root.mkdir(parents=True)
    config = {"method": method, "task": task, "model": model, "dtype": "float32", "options": options,
              "task_options": {}, "temperature": 0.0, "baseline": True, "draft": draft}  # fmt: skip
    if shared and method != "ar":
        config["baseline_run"] = "../ar"
    (root / MANIFEST).write_text(json.dumps({"config": config, "environment": {"device": "cpu"}}))
    records = [] if method == "ar" else [record("method", method, i, per_step, seconds + 0.01 * i) for i in range(4)]
    if method == "ar" or not shared:
        records += [record("baseline", "ar", i, 1, 1.0 + 0.02 * i) for i in range(4)]
    (root / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Runs of two models: a lookahead sweep (numeric), a speculative pair (categorical), PLD on two tasks, an
    exact repeat of a run (labels collide), a run holding its own baseline, and machine paths in model and options."""
    root = tmp_path_factory.mktemp("runs")
    small, big = "smollm2-135m", str(root / "models" / "big-model")
    a, b = root / "mtbench" / "small", root / "gsm8k" / "small"
    write_run(a / "ar", small, "mtbench", "ar", {}, 1, 1.0)
    write_run(a / "pld", small, "mtbench", "pld", {"num_candidates": 10}, 2, 0.8)
    for w in (2, 5, 15):
        write_run(a / f"la-{w}", small, "mtbench", "lookahead", {"window": w, "guess": w}, 1 + w // 5, 0.9 + w / 20)
    write_run(b / "ar", small, "gsm8k", "ar", {}, 1, 1.0)
    write_run(b / "pld", small, "gsm8k", "pld", {"num_candidates": 10}, 3, 0.6)
    write_run(b / "pld-again", small, "gsm8k", "pld", {"num_candidates": 10}, 3, 0.65)
    c = root / "humaneval" / "big"
    write_run(c / "ar", big, "humaneval", "ar", {}, 1, 2.0)
    for adaptive in (False, True):
        write_run(c / f"spec-{adaptive}", big, "humaneval", "speculative", {"num_draft": 4, "adaptive": adaptive},
                  3 + adaptive, 1.2, draft="qwen-draft")  # fmt: skip
    write_run(c / "llm2slm", big, "humaneval", "llm2slm", {"checkpoint": str(root / "ckpt" / "mine")}, 1, 0.9, False)
    return root


@pytest.fixture(scope="module")
def loaded(tree):
    runs = rep.find_runs([tree])
    return rep.table(runs), runs


def texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_token_latency_draws_every_run_once_with_unique_labels(loaded):
    _, runs = loaded
    fig = token_latency(runs)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    lanes = sum(bool(r.method) for r in runs) + sum(bool(r.baseline and not r.config.get("baseline_run")) for r in runs)
    assert len(labels) == lanes == 13 and len(set(labels)) == len(labels)
    assert sum("pld · candidates=10 · gsm8k" in label for label in labels) == 2  # the repeat is told apart by its run
    assert any(label.startswith("big-model · ar (baseline) · humaneval") for label in labels)
    plt.close(fig)


def whiskers(ax: plt.Axes) -> dict[float, tuple[float, float]]:
    """Each vertical error bar of an axes: its x, and its low and high end."""
    segments = [s for c in ax.containers if isinstance(c, ErrorbarContainer) for s in c.lines[2][0].get_segments()]
    assert all(s[0][0] == s[1][0] for s in segments)  # vertical
    return {round(s[0][0], 9): (round(s[0][1], 6), round(s[1][1], 6)) for s in segments}


def test_whiskers_sit_on_their_own_bars_and_span_their_interval(loaded):
    df, _ = loaded
    rows = df[(df["method"] != "ar") & df["speedup"].notna()]
    ci = {round(r.speedup, 6): (round(r.speedup_ci_low, 6), round(r.speedup_ci_high, 6)) for r in rows.itertuples()}
    fig = speedup_by_task(df)
    bars = 0
    for ax in fig.axes:
        drawn = whiskers(ax)
        for bar in [p for p in ax.patches if isinstance(p, Rectangle)]:
            assert drawn.pop(round(bar.get_x() + bar.get_width() / 2, 9)) == ci[round(bar.get_height(), 6)]
            bars += 1
        assert not drawn  # no whisker off its bar
        assert sum(t.get_text().startswith("n=4") for t in ax.texts) == len(ax.patches)
    assert bars == len(rows) == 9  # the repeated run too: no row is dropped
    plt.close(fig)


def test_a_method_has_one_colour_in_every_figure(loaded):
    df, runs = loaded
    palette = Palette.of(df, runs)
    pld = palette.colour("pld", "candidates=10")
    assert pld == method_colour("pld") and palette.colour("pld", "unseen") == pld
    bars = speedup_by_task(df, palette)
    handles = [h for ax in bars.axes for h in ax.get_legend_handles_labels()[0]]
    by_label = {h.get_label(): h.patches[0].get_facecolor() for h in handles}
    assert plt.matplotlib.colors.to_hex(by_label["pld · candidates=10"]) == pld
    boxes = token_latency(runs, palette)
    ax = boxes.axes[0]
    for label, patch in zip(ax.get_yticklabels(), [p for p in ax.patches], strict=True):
        if " · pld · " in label.get_text():
            assert plt.matplotlib.colors.to_hex(patch.get_facecolor()) == pld
    shades = [palette.colour("lookahead", f"W={w} G={w}") for w in (2, 5, 15)]
    assert len(set(shades)) == 3 and method_colour("my-plugin") == method_colour("my-plugin")
    for fig in (bars, boxes):
        plt.close(fig)


def test_sweep_joins_numeric_settings_and_keeps_categories_apart(loaded):
    assert numeric_axis(["W=2 N=3 G=2", "W=5 N=3 G=5", "W=15 N=3 G=15"]) == ("W (with G)", [2.0, 5.0, 15.0])
    assert numeric_axis(["k=4 adaptive=False", "k=4 adaptive=True"]) is None
    assert numeric_axis(["W=2 G=9", "W=5 G=3"]) is None  # not one path through the grid
    df, _ = loaded
    fig = sweep(df)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 4 and sum("tau" in t for t in titles) == 2  # speedup and tau on their own axes
    lines = {ax.get_title(): [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2] for ax in fig.axes}
    assert all(lines[t] for t in titles if t.startswith("lookahead"))
    assert not any(lines[t] for t in titles if t.startswith("speculative"))
    plt.close(fig)


def test_speedup_vs_tau_has_a_panel_per_model_and_iso_overhead_lines(loaded):
    df, _ = loaded
    fig = speedup_vs_tau(df)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    for ax in panels:
        assert {"c=1", "c=1.5", "c=2", "c=3"} <= {t.get_text() for t in ax.texts}
        points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        assert points == (6 if ax.get_title().startswith("smollm2") else 3)
    plt.close(fig)


def test_no_machine_path_in_any_figure(loaded, tree, tmp_path):
    df, runs = loaded
    assert clean("checkpoint=/srv/example/ckpt/x model=ckpt/y") == "checkpoint=x model=ckpt/y"
    for make, data in ((speedup_by_task, df), (speedup_vs_tau, df), (sweep, df), (tokens_per_step, runs),
                       (token_latency, runs)):  # fmt: skip
        fig = make(data)
        found = [t for t in texts(fig) if str(tree) in t or ABSOLUTE.search(t)]
        assert not found, (make.__name__, found)
        plt.close(fig)
    assert any("checkpoint=mine" in t for t in texts(token_latency(runs)))
    plt.close("all")


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_report_writes_figures_in_the_asked_format(tree, tmp_path, monkeypatch, capsys, fmt):
    code, _, err = bench(monkeypatch, capsys, "report", str(tree), "--out", str(tmp_path), "--format", fmt)
    assert code == 0, err
    made = {p.name for p in tmp_path.iterdir() if p.suffix == f".{fmt}"}
    names = {"speedup_by_task", "speedup_vs_tau", "tokens_per_step", "token_latency", "sweep"}
    assert made == {f"{n}.{fmt}" for n in names} and not list(tmp_path.glob("*.png"))
    assert all(f"]({n}.{fmt})" in (tmp_path / "summary.md").read_text() for n in names)
    if fmt == "svg":  # text stays text (editable), and names no machine path
        latency = (tmp_path / "token_latency.svg").read_text()
        assert "checkpoint=mine" in latency and str(tree) not in latency


def test_an_unknown_format_is_refused(tree, tmp_path, monkeypatch, capsys):
    code, _, err = bench(monkeypatch, capsys, "report", str(tree), "--out", str(tmp_path / "r"), "--format", "jpg")
    assert code == 2 and "unknown figure format 'jpg'" in err and not (tmp_path / "r").exists()
    code, _, err = bench(monkeypatch, capsys, "sweep", str(tmp_path / "grid.yaml"), "--format", "jpg")
    assert code == 2 and "unknown figure format 'jpg'" in err  # refused before any cell runs


def test_all_plots_writes_png_by_default(loaded, tmp_path):
    df, runs = loaded
    made = all_plots(df, runs, tmp_path)
    assert {p.name for p in made} >= {"speedup_by_task.png", "tokens_per_step.png", "token_latency.png", "sweep.png"}
    assert all(p.stat().st_size > 5000 for p in made)
