"""The LLM-to-SLM table: for each LLM/SLM pair, the LLM as is (and fine-tuned, when run), the SLM fine-tuned alone,
and LLM-to-SLM, on the same newstest2014 sentences: BLEU, chrF, time per sentence, speedup over the LLM's own
greedy decoding, and the paired-bootstrap interval of LLM-to-SLM's BLEU and chrF difference from the SLM alone.

    python scripts/llm2slm_table.py --out results/llm2slm \\
        --pair "qwen2.5-coder-0.5b -> smollm2-135m" llm2slm=RUN slm=RUN [llm_ft=RUN]

`llm2slm=RUN`: a `bench run --method llm2slm` directory with its `ar` baseline (the LLM as is, same run,
interleaved; a run without baseline gives no LLM row and no speedup, e.g. a pair scored on more sentences than its
LLM was timed on); `slm=RUN` and `llm_ft=RUN`: `bench run --method ar` directories of `bench train slm` checkpoints;
`llm2slm-NAME=RUN`: another LLM-to-SLM checkpoint (e.g. `--llm-layer`, `--feature-norm`), run with `--no-baseline`.
Speedup is the ratio of total wall time over the same sentences (the models' tokenizers differ, so tokens/s are
not comparable across rows); the LLM-to-SLM row's is measured in the same run as the LLM's, the others' across runs
on the same machine (marked). Training time comes from each checkpoint's record when its folder is present.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from bench.significance import paired_bootstrap, signature
from bench.store import SAMPLES, read_samples
from methods.llm2slm import STATE_FILE
from tasks.base import Sample
from tasks.wmt import WMT, first_line

METRICS = ("bleu", "chrf")
ROLES = {"llm2slm": "method", "slm": None, "llm_ft": None}  # None: an `ar` run's one lane
SYSTEMS = {"llm": "LLM (as is)", "llm_ft": "LLM fine-tuned (LoRA)", "slm": "SLM fine-tuned alone",
           "llm2slm": "LLM-to-SLM"}  # fmt: skip
VARIANT = "llm2slm-"  # llm2slm-NAME=RUN: another LLM-to-SLM checkpoint (a run without baseline)


def role(key: str) -> str | None:
    return "method" if key.startswith(VARIANT) else ROLES[key]


def is_llm2slm(key: str) -> bool:
    return key == "llm2slm" or key.startswith(VARIANT)


def records(run: Path, role: str | None) -> dict[str, dict[str, Any]]:
    """The finished first-repeat records of one lane of a run (`role`; None: every record), by sample id."""
    rows, _ = read_samples(run / SAMPLES)
    return {r["sample_id"]: r for r in rows if role in (None, r["role"]) and r.get("repeat", 1) == 1}


def training(run: Path) -> dict[str, Any]:
    """What trained the system of a run: its checkpoint folder (relative), steps and wall time, when present."""
    config = json.loads((run / "manifest.json").read_text())["config"]
    folder = config["options"].get("checkpoint") or config["model"]
    state = Path(folder) / STATE_FILE
    if not state.is_file():
        return {"checkpoint": folder}
    record = json.loads(state.read_text())
    seen = record["step"] * record["config"]["batch_size"]
    out = {"checkpoint": folder, "train_steps": record["step"], "train_examples_seen": seen,
           "train_min": record["wall_s"] / 60}  # fmt: skip
    if record["kind"] == "llm2slm":
        config = record["config"]
        out |= {"llm_layer": config.get("llm_layer", -1), "feature_norm": config.get("feature_norm", False)}
    return out


def pair_rows(name: str, runs: dict[str, Path], task: WMT, samples: dict[str, Sample]) -> list[dict[str, Any]]:
    """The table rows of one pair, on the sentences every system finished, scored as the task scores."""
    llm = records(runs["llm2slm"], "baseline")  # empty for a run without baseline: no LLM row, no speedup
    lanes = ({"llm": llm} if llm else {}) | {key: records(runs[key], role(key)) for key in runs}
    ids = sorted(set.intersection(*(set(lane) for lane in lanes.values())), key=lambda i: (len(i), i))
    refs = [samples[i].reference for i in ids]
    hyps = {key: [first_line(lane[i]["text"]) for i in ids] for key, lane in lanes.items()}
    seconds = {key: sum(lane[i]["total_s"] for i in ids) for key, lane in lanes.items()}
    rows: dict[str, dict[str, Any]] = {}
    for key, lane in lanes.items():
        row = {"pair": name, "system": SYSTEMS["llm2slm" if is_llm2slm(key) else key], "sentences": len(ids)}
        row |= task.score([samples[i] for i in ids], [lane[i]["text"] for i in ids])
        row |= {"s_per_sentence": seconds[key] / len(ids),
                "tokens_per_s": sum(lane[i]["new_tokens"] for i in ids) / seconds[key],
                "speedup_vs_llm": seconds["llm"] / seconds[key] if llm else None,
                "speedup_measured": "same run" if key in ("llm", "llm2slm") else "across runs"}  # fmt: skip
        rows[key] = row | (training(runs[key]) if key != "llm" else {})
    for metric in METRICS:
        for reference in ("llm", "llm_ft"):
            base = rows[reference][metric] if reference in rows else None
            for row in rows.values():
                row[f"{metric}_vs_{reference}_pct"] = 100 * row[metric] / base if base else None
        for key in (k for k in hyps if "slm" in hyps and is_llm2slm(k)):
            test = paired_bootstrap(metric, refs, hyps[key], hyps["slm"])
            rows[key] |= {f"{metric}_minus_slm": test["delta"], f"{metric}_minus_slm_low": test["low"],
                          f"{metric}_minus_slm_high": test["high"],
                          f"{metric}_p_not_better": test["p_not_better"]}  # fmt: skip
    return list(rows.values())


def markdown(table: pd.DataFrame) -> str:
    """The table as markdown, with the signatures and what the columns mean."""
    shown = table.drop(columns=[c for c in table.columns if c.endswith(("_low", "_high"))]).dropna(axis=1, how="all")
    for metric in ("bleu", "chrf"):
        if f"{metric}_minus_slm" in table:
            low, high = table[f"{metric}_minus_slm_low"], table[f"{metric}_minus_slm_high"]
            shown[f"{metric}_minus_slm"] = [
                "" if pd.isna(v) else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"
                for v, lo, hi in zip(table[f"{metric}_minus_slm"], low, high, strict=True)
            ]
    lines = [
        "# LLM-to-SLM on newstest2014 de-en (`make reproduce-llm2slm-cpu`)",
        "",
        shown.map(cell).to_markdown(index=False),
        "",
        f"- BLEU: `{signature('bleu')}`; chrF: `{signature('chrf')}` (first output line vs the raw reference).",
        "- `*_minus_slm`: LLM-to-SLM minus the SLM fine-tuned alone, paired bootstrap over sentences (1000 resamples,"
        " 95% percentile interval); `*_p_not_better`: share of resamples where LLM-to-SLM is not better.",
        "- `speedup_vs_llm`: total wall time of the LLM's greedy decoding over the same sentences divided by the"
        " system's; `same run`: measured interleaved with the LLM in one process; `across runs`: separate runs, same"
        " machine and settings.",
        "- `*_vs_llm_pct` / `*_vs_llm_ft_pct`: the score as a percentage of the LLM as is / fine-tuned.",
    ]
    return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    """A table cell: 3 significant digits for a fraction, blank for a missing value."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", nargs="+", action="append", required=True, metavar=("NAME", "KEY=RUN"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for name, *items in args.pair:
        runs = {k: Path(v) for k, v in (item.split("=", 1) for item in items)}
        unknown = {k for k in runs if k not in ROLES and not k.startswith(VARIANT)}
        if unknown or "llm2slm" not in runs:
            keys = "needs llm2slm=RUN and takes slm=, llm_ft=, llm2slm-NAME="
            raise SystemExit(f"error: --pair {keys} (got {sorted(runs)})")
        task = WMT(os.environ.get("DECODEBENCH_DATA"))
        rows += pair_rows(name, runs, task, {s.id: s for s in task.load()})
    table = pd.DataFrame(rows)
    for column in ("sentences", "train_steps", "train_examples_seen", "llm_layer"):
        if column in table:
            table[column] = table[column].astype("Int64")  # whole numbers, not 1.31e+04
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "table.csv", index=False, float_format="%.4g")
    (args.out / "table.md").write_text(markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
