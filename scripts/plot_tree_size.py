"""Speedup and tau against the draft tree's size for the trained drafters (Medusa, EAGLE, EAGLE-2) in a report's
summary.csv: on a 2-core CPU a forward of many query tokens costs much more than one, so the winning tree is small.

    python scripts/plot_tree_size.py results/cpu/summary.csv --out results/cpu/tree_size.png

The size is the most draft tokens a step verifies: Medusa's choices cut to its heads' depth (read from the heads'
config.json), EAGLE's choices list, EAGLE-2's `max_nodes`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.plot_style import method_colour  # noqa: E402
from methods.eagle import CHOICES, Eagle2Options  # noqa: E402
from methods.medusa import TREES, MedusaTree  # noqa: E402

METHODS = ("medusa", "eagle", "eagle2")


def settings(text: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in str(text).split() if "=" in word)


def tree_size(method: str, options: dict[str, str]) -> int:
    """The most draft tokens one step of this row's settings verifies."""
    if method == "medusa":
        config = Path(options["heads"]) / "config.json"  # medusa's settings label: heads=..., tree=...
        heads = json.loads(config.read_text())["medusa_num_heads"] if config.is_file() else 99
        return len(MedusaTree(TREES[options.get("tree", "mc_sim_7b_63")], heads, 1 << 30).nodes)
    if method == "eagle":
        return len(CHOICES[options.get("tree", "mc_sim_7b_63")])
    given = {k: int(v) for k, v in options.items() if k in ("depth", "children", "frontier", "max_nodes")}
    return Eagle2Options(tree=options.get("tree", "reference"), **given).shape().max_nodes


def drafter(options: dict[str, str]) -> tuple[str, str | None]:
    """Which drafter a row ran (the heads' or layer's folder name) and its reduced draft vocabulary (None: all)."""
    name = Path(options.get("heads") or options.get("draft_heads") or "?").name
    vocab = options.get("draft_vocab")
    return name, None if vocab in (None, "None") else vocab


LINES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    df = pd.read_csv(args.summary)
    df = df[df["method"].isin(METHODS) & (df["category"] == "all") & df["temperature"].fillna(0).eq(0)].copy()
    df["size"] = [tree_size(m, settings(s)) for m, s in zip(df["method"], df["settings"], strict=True)]
    df["drafter"], df["vocab"] = zip(*[drafter(settings(s)) for s in df["settings"]], strict=True)
    df["vocab"] = df["vocab"].fillna("all")
    fig, (speed, tau) = plt.subplots(1, 2, figsize=(17, 6))
    tasks = sorted(df["task"].astype(str).unique())
    drafters = sorted(df["drafter"].unique())
    groups = df.sort_values("size").groupby(["method", "task", "drafter", "vocab", "samples"], sort=False)
    for (method, task, name, vocab, samples), rows in groups:  # other sample sets: other lines
        reduced = vocab != "all"
        label = f"{method}, {task} (n={samples}): {name}" + (f", vocab {vocab}" if reduced else "")
        style = {"color": method_colour(method), "ls": LINES[drafters.index(name) % len(LINES)],
                 "marker": "os^D"[tasks.index(task) % 4], "mfc": "white" if reduced else None}  # fmt: skip
        err = [rows["speedup"] - rows["speedup_ci_low"], rows["speedup_ci_high"] - rows["speedup"]]
        speed.errorbar(rows["size"], rows["speedup"], yerr=err, capsize=3, label=label, **style)
        tau.plot(rows["size"], rows["tau"], label=label, **style)
    speed.axhline(1.0, color="grey", lw=0.8, ls="--")
    speed.set(xlabel="draft tokens verified per step (tree size)", ylabel="speedup over our AR loop (95% CI)")
    tau.set(xlabel="draft tokens verified per step (tree size)", ylabel="tau (tokens per target forward)")
    for ax in (speed, tau):
        ax.set_xscale("log", base=2)
        ax.set_xticks([4, 8, 16, 32, 64], ["4", "8", "16", "32", "64"])
        ax.grid(alpha=0.3)
    tau.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(
        "Trained drafters: tree size on this CPU (greedy; colour: method, line: drafter, marker: task; "
        "hollow: reduced draft vocabulary)"
    )
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
