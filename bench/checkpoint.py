"""The files of a `bench train` checkpoint folder: writing one, and reading one back to resume.

A checkpoint folder holds `checkpoint.json` (config, step, wall time, the artifacts of the models it was trained
for), the trainable weights, the optimizer and RNG state, and `history.csv` (train and eval loss per step). The
baseline's folder is also a plain transformers model folder (LoRA merged), so `bench run --model DIR` loads it.
Every file is replaced atomically, `checkpoint.json` last, so a crash leaves the previous checkpoint usable.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.errors import BenchError
from core.files import atomic_write
from methods.llm2slm import LORA, STATE_FILE, WEIGHTS_FILE, load_trainable, read_record, trainable_state

if TYPE_CHECKING:
    from bench.train import TrainConfig

OPTIMIZER_FILE = "optimizer.pt"
HISTORY_FILE = "history.csv"
HISTORY_FIELDS = ("step", "train_loss", "eval_loss", "elapsed_s")


def new_record(
    config: TrainConfig, llm_artifact: dict[str, Any] | None, slm_artifact: dict[str, Any], examples: dict[str, int]
) -> dict[str, Any]:
    """The fields of `checkpoint.json` that stay the same over a run (`save` adds the step and the wall time)."""
    return {
        "format": 1,
        "kind": config.kind,
        "config": config.identity(),
        "llm_artifact": llm_artifact,
        "slm_artifact": slm_artifact,
        "lora": LORA if config.slm_tuning == "lora" else None,
        "examples": examples,
        "history": HISTORY_FILE,
    }


def resume_record(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint record to continue in `out` (None for a new run); a different config is refused, and so is
    a folder that holds something else."""
    if not (out / STATE_FILE).exists():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BenchError(f"{out} exists and is not a bench train checkpoint; choose a new --out")
        return None
    record = read_record(out, kind=None)
    ours, theirs = config.identity(), record["config"]
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        raise BenchError(f"{out} holds a checkpoint with a different config ({', '.join(differ)}); use another --out")
    return record


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Write the loss history as CSV: HISTORY_FIELDS, then any further metric the rows hold (a missing value is an
    empty cell)."""
    names = list(HISTORY_FIELDS) + [k for k in dict.fromkeys(k for r in history for k in r) if k not in HISTORY_FIELDS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, names)
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The loss history written by `write_history` (an empty cell reads as None)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: int(v) if k == "step" else float(v) if v else None for k, v in r.items()} for r in rows]


def check_counts(counts: dict[str, int | None], eval_samples: int, eval_every: int, lr: float) -> None:
    """Refuse training numbers that cannot train, each with one line naming its flag."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
    if eval_samples < 0 or eval_every < 0:
        raise BenchError("--eval-samples and --eval-every must be >= 0")
    if not (math.isfinite(lr) and lr > 0):
        raise BenchError(f"--lr must be a positive number (got {lr})")


def save(
    out: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    record: dict[str, Any],
    history: list[dict[str, Any]],
    export: Any,
) -> None:
    """Write a checkpoint (the record last); `export`: the SLM's tokenizer, to also write a plain model folder."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    atomic_write(out / OPTIMIZER_FILE, lambda path: torch.save(state, path))
    atomic_write(out / HISTORY_FILE, lambda path: write_history(path, history))
    atomic_write(out / WEIGHTS_FILE, lambda path: save_file(trainable_state(model), path))
    if export is not None:
        plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
        plain.save_pretrained(out)
        export.save_pretrained(out)
    atomic_write(out / STATE_FILE, json.dumps(record, indent=1))


def restore(
    out: Path, record: dict[str, Any], model: Any, optimizer: torch.optim.Optimizer
) -> tuple[int, float, list[dict[str, Any]]]:
    """Load the checkpoint `record` of `out` into `model` (its trainable weights), `optimizer` and torch's RNG;
    returns its step, its wall time and the loss history so far."""
    from safetensors.torch import load_file

    load_trainable(model, load_file(out / WEIGHTS_FILE))
    saved = torch.load(out / OPTIMIZER_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return record["step"], record["wall_s"], read_history(out / HISTORY_FILE)
