"""The files of a `bench train medusa|eagle` folder besides the hub layout: the run record (`checkpoint.json`,
written last at every checkpoint), the loss history (`history.csv`: bench.checkpoint's columns, then the held-out
metrics) and its plot (`loss.png`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import BenchError
from core.files import atomic_write, read_json

if TYPE_CHECKING:
    from bench.train_drafter import DrafterConfig

STATE_FILE = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.pt"
PLOT_FILE = "loss.png"


def eval_row(result: dict[str, float]) -> dict[str, float]:
    """History columns of an evaluation: eval_loss and eval_<metric>."""
    return {"eval_loss" if k == "loss" else f"eval_{k}": v for k, v in result.items()}


def write_record(out: Path, record: dict[str, Any]) -> None:
    atomic_write(out / STATE_FILE, json.dumps(record, indent=1, default=str))


def plot_history(history: list[dict[str, Any]], path: Path, kind: str) -> None:
    """The train loss (thin: per step; thick: 10-step mean) and the held-out loss (dots) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in history if r["train_loss"] is not None]
    evals = [(r["step"], r["eval_loss"]) for r in history if r["eval_loss"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        steps, losses = zip(*train, strict=True)
        mean = [sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, losses, lw=0.6, alpha=0.4, color="C0")
        ax.plot(steps, mean, lw=1.5, color="C0", label="train (10-step mean)")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", color="C1", label="held out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{kind} training loss")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def resume_record(out: Path, config: DrafterConfig) -> dict[str, Any] | None:
    """The record of the run in `out` to continue (None: a new run); another recipe is refused in one line."""
    if not (out / STATE_FILE).is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BenchError(f"{out} exists and is not a bench train {config.kind} folder; choose a new --out")
        return None
    record = read_json(out / STATE_FILE)
    if not isinstance(record, dict) or not {"recipe", "step", "target", "warmup_steps"} <= record.keys():
        raise BenchError(f"{out / STATE_FILE} is not a bench train {config.kind} record; choose a new --out")
    ours, theirs = config.identity(), record["recipe"]
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        raise BenchError(f"{out} holds a run with a different recipe ({', '.join(differ)}); use another --out")
    return record
