"""`bench sweep CONFIG.yaml`: a grid of runs (models x dtypes x tasks x methods x settings) in one results tree.

Each cell is a `bench run` into OUT/TASK/MODEL-DTYPE/METHOD[-SETTINGS]. The AR baseline is one `ar` run per
(model, dtype, task) in OUT/TASK/MODEL-DTYPE/ar, shared by every cell: the first cell measures it interleaved
with its own samples, later cells reuse it (same process, same machine). A finished cell is skipped; an
unfinished one resumes. A failing cell is recorded with its reason in OUT/sweep.json and the sweep goes on.

Config (YAML):
    name: cpu                      # the results tree defaults to runs/sweeps/NAME
    out: results/cpu/runs          # optional
    models: [smollm2-135m]
    dtypes: [float32]
    device: cpu
    tasks: [mtbench, {name: specbench, subset: translation}, {name: wmt, split: newstest2014}]
    limit: 8                       # any `bench run` setting: max_new_tokens, turns, warmup, seed, temperature ...
    chat_template: hf              # a task entry may set limit, max_new_tokens, turns, chat_template, system_prompt
    methods:
      - pld
      - {method: lookahead, grid: {window: [2, 5], ngram: [3], guess: [2, 5]}}
      - {method: lookahead, settings: [{window: 15, ngram: 5, guess: 15}]}
      - {method: speculative, draft: qwen2.5-coder-0.5b, models: [qwen2.5-coder-1.5b], settings: [{num_draft: 4}]}
"""

from __future__ import annotations

import itertools
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from bench.report import settings_label
from bench.runner import BASELINE, RunConfig
from bench.store import MANIFEST, SUMMARY
from core.errors import BenchError
from core.files import portable, read_json, write_json
from methods.base import METHODS

RUN_SETTINGS = {f.name for f in fields(RunConfig)} - {"method", "task", "model", "dtype", "options", "task_options",
                                                      "draft", "out"}  # fmt: skip
TOP_KEYS = {"name", "out", "models", "dtypes", "tasks", "methods", "device", "resources"} | RUN_SETTINGS
EXECUTORS = ("local", "ray")
METHOD_KEYS = {"method", "settings", "grid", "draft", "models", "dtypes", "tasks", "quant", "draft_quant"}
# other keys of a task entry are task options
TASK_SETTINGS = {"limit", "max_new_tokens", "turns", "chat_template", "system_prompt", "batch_size", "perplexity"}


@dataclass
class Cell:
    """One run of a sweep (its config resolved: every default filled in) and the shared `ar` run it is compared
    with (None: no baseline)."""

    config: RunConfig
    baseline_dir: Path | None


def _check_keys(where: str, given: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise BenchError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BenchError(f"{where} must be a list")
    return value


def load_config(path: Path) -> dict[str, Any]:
    """Read and check a sweep file: one clear error for a missing file, bad YAML or an unknown key."""
    if not path.exists():
        raise BenchError(f"no such sweep config: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BenchError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise BenchError(f"{path}: a sweep config is a mapping (name, models, tasks, methods, ...)")
    _check_keys(str(path), config, TOP_KEYS)
    for key in ("models", "tasks", "methods"):
        if not _list(config.get(key), f"{path}: {key}"):
            raise BenchError(f"{path}: `{key}` must list at least one entry")
    return config


def _option_sets(entry: dict[str, Any], where: str) -> list[dict[str, Any]]:
    settings = [dict(s) for s in _list(entry.get("settings"), f"{where}: settings")]
    grid = entry.get("grid") or {}
    if not isinstance(grid, dict):
        raise BenchError(f"{where}: grid must map option names to lists of values")
    if grid:
        names = list(grid)
        settings += [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    return settings or [{}]


def _task_entries(config: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, run settings, task options) of each `tasks:` entry."""
    out = []
    for task in config["tasks"]:
        task = {"name": task} if isinstance(task, str) else dict(task)
        if "name" not in task:
            raise BenchError(f"task entry {task}: needs a name")
        name = task.pop("name")
        out.append((name, {k: v for k, v in task.items() if k in TASK_SETTINGS},
                    {k: v for k, v in task.items() if k not in TASK_SETTINGS}))  # fmt: skip
    return out


def _method_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [{"method": e} if isinstance(e, str) else dict(e) for e in config["methods"]]
    for entry in entries:
        _check_keys(f"method {entry.get('method')}", entry, METHOD_KEYS)
    return entries


def cells(config: dict[str, Any], root: Path) -> list[Cell]:
    """Every (model, dtype, task, method, settings) cell, resolved (so option names and values are checked before
    any model loads), baselines shared per (model, dtype, task)."""
    common = {k: config[k] for k in RUN_SETTINGS & set(config)}
    out = []
    grid = itertools.product(config["models"], config.get("dtypes", ["float32"]), _task_entries(config))
    for model, dtype, (task, settings, task_options) in grid:
        batch = [f"b{settings['batch_size']}"] if settings.get("batch_size", 1) > 1 else []
        label = "-".join([task, *map(str, task_options.values()), *batch])
        folder = root / label / f"{Path(model).name}-{dtype}"
        for entry in _method_entries(config):
            tasks = entry.get("tasks", [task])  # task names, or labels (the folder names) for one task entry
            if model not in entry.get("models", [model]) or (task not in tasks and label not in tasks):
                continue
            if dtype not in entry.get("dtypes", [dtype]):
                continue
            if settings.get("batch_size", 1) > 1 and not METHODS.get(entry["method"]).batchable:
                continue  # a batched task entry runs the methods that decode batches (ar, hf), and only those
            for options in _option_sets(entry, f"method {entry['method']}"):
                quants = {k: entry[k] for k in ("quant", "draft_quant") if k in entry}
                run = RunConfig(
                    method=entry["method"], task=task, model=model, dtype=dtype, draft=entry.get("draft"),
                    options=options, task_options=task_options, **(common | settings | quants),
                ).resolve()  # fmt: skip
                if run.is_baseline:
                    continue  # the shared baseline
                suffix = settings_label(
                    {"method": run.method, "options": options, "draft": entry.get("draft")} | quants
                )
                suffix = suffix.replace("=", "").replace(" ", "_").replace("/", "_")
                run = replace(run, out=str(folder / (run.method + (f"-{suffix}" if suffix else ""))))
                out.append(Cell(run, folder / BASELINE if run.baseline else None))
    return out


def finished(cell: Cell) -> bool:
    """A cell whose run directory holds the same config and a summary of as many samples as asked for."""
    root = Path(cell.config.out)
    if not (root / SUMMARY).exists() or not (root / MANIFEST).exists():
        return False
    identity = cell.config.identity()
    stored = {k: v for k, v in read_json(root / MANIFEST).get("config", {}).items() if k in identity}
    if stored != json.loads(json.dumps(identity)):
        return False
    summary = {s["role"]: s for s in read_json(root / SUMMARY)}
    samples = summary.get("method", {}).get("samples", 0)
    return cell.config.limit is not None and samples >= cell.config.limit


def resources(config: dict[str, Any]) -> dict[str, float]:
    """What one cell asks of a Ray cluster: the config's `resources`, else one GPU for CUDA runs, else one CPU."""
    given = config.get("resources")
    if given is None:
        return {"num_gpus": 1} if str(config.get("device", "cpu")).startswith("cuda") else {"num_cpus": 1}
    if not isinstance(given, dict) or set(given) - {"num_cpus", "num_gpus", "memory"}:
        raise BenchError("resources: a mapping of num_cpus, num_gpus and memory (bytes)")
    return given


def run_sweep(
    path: Path,
    out: Path | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
    executor: str = "local",
    address: str | None = None,
    max_retries: int = 0,
) -> dict[str, Any]:
    """Run every unfinished cell on the local process or a Ray cluster; returns this sweep's cells. OUT/sweep.json
    accumulates the cells of every sweep into OUT. A cell that still fails after `max_retries` retries is recorded
    with its reason."""
    if executor not in EXECUTORS:
        raise BenchError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if max_retries < 0:
        raise BenchError(f"--max-retries must be >= 0 (got {max_retries})")
    config = load_config(path)
    if executor == "ray":
        from bench.ray_executor import check_installed

        check_installed()
    root = Path(out or config.get("out") or Path("runs") / "sweeps" / config.get("name", path.stem))
    todo = cells(config, root)
    root.mkdir(parents=True, exist_ok=True)
    status = _sweep_log(root, path, executor)
    pending = []
    for cell in todo:
        key = str(Path(cell.config.out).relative_to(root))
        if finished(cell):
            echo(f"{key}: finished earlier, skipped")
            status["cells"][key] = {"status": "done", "config": portable(path)}
        else:
            pending.append(cell)
    if executor == "ray":
        from bench.ray_executor import run_cells

        results = run_cells(pending, resources(config), address, max_retries, echo)
        for cell in pending:
            key = str(Path(cell.config.out).relative_to(root))
            outcome = results.get(cell.config.out, {"status": "failed", "reason": "not run"})
            status["cells"][key] = outcome | {"config": portable(path)}
    for i, cell in enumerate(pending if executor == "local" else [], 1):
        key = str(Path(cell.config.out).relative_to(root))
        for attempt in range(max_retries + 1):
            echo(f"[{i}/{len(pending)}] {key}: running" + (f" (retry {attempt})" if attempt else ""))
            outcome = _run_local(cell, progress, echo, f"[{i}/{len(pending)}] {key}")
            status["cells"][key] = outcome | {"config": portable(path)}
            if status["cells"][key]["status"] == "done":
                break
        write_json(root / "sweep.json", status)
    write_json(root / "sweep.json", status)
    mine = {str(Path(cell.config.out).relative_to(root)) for cell in todo}
    return status | {"root": str(root), "cells": {k: v for k, v in status["cells"].items() if k in mine}}


def _sweep_log(root: Path, path: Path, executor: str) -> dict[str, Any]:
    """OUT/sweep.json as earlier sweeps into the same folder left it (their cells kept), with this config added."""
    log = read_json(root / "sweep.json") if (root / "sweep.json").exists() else {}
    configs = log.get("configs", [log["config"]] if "config" in log else [])
    configs = configs + [portable(path)] if portable(path) not in configs else configs
    return {"configs": configs, "executor": executor, "cells": log.get("cells", {})}


def _run_local(cell: Cell, progress: bool, echo: Callable[[str], None], name: str) -> dict[str, Any]:
    from bench.runner import run

    try:
        result = run(cell.config, progress=progress, baseline_dir=cell.baseline_dir)
    except (BenchError, RuntimeError, ValueError, OSError) as exc:  # one cell's failure does not stop the sweep
        reason = f"{type(exc).__name__}: {exc}"
        echo(f"{name}: FAILED ({reason})")
        frames = traceback.extract_tb(exc.__traceback__)[-3:]  # where it failed, without the machine's paths
        trace = "\n".join(f"{portable(f.filename)}:{f.lineno} in {f.name}" for f in frames)
        return {"status": "failed", "reason": reason, "trace": trace}
    method = next(s for s in result.summaries if s["role"] == "method")
    speedup = "-" if method.get("speedup") is None else f"{method['speedup']:.3f}"
    echo(f"{name}: tau {method['tau']:.3f}, speedup {speedup}")
    return {"status": "done"}
