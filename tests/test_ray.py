"""The Ray executor on a local cluster bound to the loopback address: the same results as the local executor,
and a worker killed mid-sweep is retried without losing or duplicating records."""

from __future__ import annotations

import json
import os
import threading
import time

import psutil
import pytest

from bench.ray_executor import LOOPBACK_ONLY
from bench.store import SAMPLES
from bench.sweep import run_sweep

os.environ.update(LOOPBACK_ONLY)  # before ray is imported: the test cluster listens on 127.0.0.1 only
ray = pytest.importorskip("ray")  # installed by `make setup` (the [ray] extra); optional for users

FIELDS = ("prompt_id", "role", "token_ids", "tau", "exact", "new_tokens", "target_forwards")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        yield
    finally:
        ray.shutdown()


def sweep_file(tmp_path, tiny_dir, data_dir, limit: int = 2, max_new_tokens: int = 12):
    config = {
        "models": [str(tiny_dir)],
        "data_dir": str(data_dir),
        "limit": limit,
        "turns": 1,
        "warmup": 0,
        "max_new_tokens": max_new_tokens,
        "tasks": ["mtbench"],
        "methods": ["pld", "jacobi", {"method": "lookahead", "grid": {"window": [2, 3], "ngram": [3], "guess": [2]}}],
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(config))
    return path


def results(root) -> dict[str, list[tuple]]:
    """Hardware-independent fields of every record, by run directory."""
    out = {}
    for samples in sorted(root.rglob(SAMPLES)):
        records = [json.loads(x) for x in samples.read_text().splitlines()]
        out[str(samples.parent.relative_to(root))] = sorted(tuple(json.dumps(r[k]) for k in FIELDS) for r in records)
    return out


def test_ray_executor_matches_local(cluster, tmp_path, tiny_dir, data_dir):
    path = sweep_file(tmp_path, tiny_dir, data_dir)
    local = run_sweep(path, tmp_path / "local", echo=lambda _: None)
    remote = run_sweep(path, tmp_path / "ray", echo=lambda _: None, executor="ray")
    assert len(local["cells"]) == len(remote["cells"]) == 4
    assert all(c["status"] == "done" for c in remote["cells"].values())
    assert results(tmp_path / "ray") == results(tmp_path / "local")
    manifest = json.loads(next((tmp_path / "ray").rglob("pld/manifest.json")).read_text())
    assert manifest["config"]["baseline_run"] == "../ar" and manifest["environment"]["node_kind"]


def test_killed_worker_is_retried_without_loss_or_duplicates(cluster, tmp_path, tiny_dir, data_dir):
    path = sweep_file(tmp_path, tiny_dir, data_dir, limit=4, max_new_tokens=48)
    status: dict = {}
    out = tmp_path / "r"
    driver = threading.Thread(
        target=lambda: status.update(run_sweep(path, out, echo=lambda _: None, executor="ray", max_retries=2))
    )
    driver.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and driver.is_alive() and time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            if "ray::execute" in " ".join(proc.info["cmdline"] or []) and time.time() - proc.create_time() > 0.5:
                proc.kill()
                killed = proc.pid
                break
        time.sleep(0.05)
    driver.join(timeout=300)
    assert killed is not None, "no worker was caught running a cell"
    assert not driver.is_alive()
    assert all(c["status"] == "done" for c in status["cells"].values()), status
    for run_dir, records in results(tmp_path / "r").items():
        ids = [json.loads(r[0]) for r in records]
        assert sorted(ids) == ["81", "82", "83", "84"], run_dir  # every sample once: none lost, none duplicated
