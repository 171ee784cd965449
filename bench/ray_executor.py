"""`bench sweep --executor ray`: every cell, and every shared AR baseline, is a Ray task; the driver keeps the
results tree.

A worker runs its cell with the ordinary runner in a scratch folder: the records the driver already holds for
that cell are copied in first (so a cell resumes instead of starting over) and so are the shared baseline's
records (so the AR baseline is never decoded again by a cell). It returns the run's manifest, records and
summaries; the driver appends the records it does not have yet through the crash-safe run store. A baseline task
runs first per (model, dtype, task, settings); its cells receive its result as a Ray dependency.

Ray retries a task whose worker died (and, with `retry_exceptions`, one that raised) up to `--max-retries` times;
after that the cell is recorded as failed with its reason and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.runner import RunConfig
from bench.store import MANIFEST, SAMPLES, RunStore, read_samples
from core.errors import BenchError

INSTALL_HINT = "--executor ray needs Ray: pip install 'decodebench[ray]' (or pip install ray)"


# Ray treats a node as a single-machine "cluster" bound to the loopback address when this is off (its switch for
# laptops); it must be set before ray is imported, and worker processes inherit it.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def check_installed() -> None:
    """One clear error saying how to install Ray when it is missing."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise BenchError(INSTALL_HINT)


def import_ray(private: bool):
    """The ray module; for a private cluster (no --address) set up so that it listens on the loopback only."""
    check_installed()
    if private:
        os.environ.update(LOOPBACK_ONLY)
    import ray

    return ray


def _write_records(folder: Path, records: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SAMPLES).write_text("".join(json.dumps(r) + "\n" for r in records))


def execute(config: dict[str, Any], done: list[dict[str, Any]], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Worker side: run one cell (or a baseline: `baseline` None) in a scratch folder, resuming from `done`.
    `baseline` is the result of the cell's baseline task; its records make the shared baseline."""
    from bench.runner import run

    with tempfile.TemporaryDirectory(prefix="decodebench-cell-") as tmp:
        cell = dataclasses.replace(RunConfig(**config), out=str(Path(tmp) / "cell"))
        _write_records(Path(cell.out), done)
        baseline_dir = None
        if baseline is not None:
            baseline_dir = Path(tmp) / "ar"
            _write_records(baseline_dir, baseline["records"])
        result = run(cell, progress=False, baseline_dir=baseline_dir)
        manifest = json.loads((Path(cell.out) / MANIFEST).read_text())
        records, _ = read_samples(Path(cell.out) / SAMPLES)
    return {"manifest": manifest, "records": records, "summaries": result.summaries}


def store_result(folder: Path, result: dict[str, Any], baseline_run: str | None) -> int:
    """Driver side: write a finished task's records into its run directory; returns how many were new."""
    config = dict(result["manifest"]["config"])
    if baseline_run is not None:
        config["baseline_run"] = baseline_run
    else:
        config.pop("baseline_run", None)
    with RunStore.open(folder, config, result["manifest"]["environment"]) as store:
        new = [r for r in result["records"] if not store.has(r["role"], r["prompt_id"])]
        for record in new:
            store.append(record)
        store.write_summary(result["summaries"])
    return len(new)


def stored_records(folder: Path) -> list[dict[str, Any]]:
    return read_samples(folder / SAMPLES)[0] if folder.exists() else []


def run_cells(
    cells: list,
    resources: dict[str, float],
    address: str | None,
    max_retries: int,
    echo: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Run the cells (and their baselines) on a Ray cluster; returns each cell's status by run directory."""
    ray = import_ray(private=address is None)
    started = not ray.is_initialized()
    if started:  # address None: a private cluster on this machine (127.0.0.1 when ray was imported here first)
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        retry_on = [RuntimeError, OSError, MemoryError]  # not BenchError: bad input fails the same way again
        task = ray.remote(execute).options(max_retries=max_retries, retry_exceptions=retry_on, **resources)
        baselines: dict[Path, Any] = {}
        pending: dict[Any, tuple[str, Path, Any]] = {}
        for cell in cells:
            if cell.baseline_dir is not None and cell.baseline_dir not in baselines:
                ar = dataclasses.asdict(cell.config.baseline_config())
                ref = task.remote(ar, stored_records(cell.baseline_dir), None)
                baselines[cell.baseline_dir] = ref
                pending[ref] = ("baseline", cell.baseline_dir, None)
            dependency = baselines.get(cell.baseline_dir)
            ref = task.remote(dataclasses.asdict(cell.config), stored_records(Path(cell.config.out)), dependency)
            pending[ref] = ("cell", Path(cell.config.out), cell)
        status: dict[str, dict[str, Any]] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            kind, folder, cell = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as exc:  # the task failed after its retries (error, lost worker, out of memory)
                reason = _reason(exc)
                echo(f"{folder}: FAILED ({reason})")
                if cell is not None:
                    status[cell.config.out] = {"status": "failed", "reason": reason}
                continue
            link = os.path.relpath(cell.baseline_dir, folder) if cell and cell.baseline_dir else None
            new = store_result(folder, result, link)
            method = result["summaries"][-1]
            echo(f"{folder}: {kind} done ({new} new records, tau {method['tau']:.3f})")
            if cell is not None:
                status[cell.config.out] = {"status": "done"}
        return status
    finally:
        if started:
            ray.shutdown()


def _reason(exc: Exception) -> str:
    """The first line of a Ray failure's cause (a RayTaskError wraps the worker's exception)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:300]
