"""The run store: durable appends, resume, torn-line recovery, corruption and config-mismatch refusal."""

from __future__ import annotations

import json

import pytest

from bench.store import SAMPLES, RunStore
from core.errors import BenchError

CONFIG = {"method": "ar", "task": "mtbench", "max_new_tokens": 8}


def rec(pid: str, role: str = "method") -> dict:
    return {"role": role, "prompt_id": pid, "new_tokens": 3, "token_ids": [1, 2, 3]}


def test_append_and_resume(tmp_path):
    store = RunStore.open(tmp_path / "run", CONFIG, {"device": "cpu"})
    store.append(rec("a"))
    store.append(rec("a", "baseline"))
    again = RunStore.open(tmp_path / "run", CONFIG, {"device": "cpu"})
    assert again.has("method", "a") and again.has("baseline", "a") and not again.has("method", "b")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"] == CONFIG and manifest["environment"] == {"device": "cpu"}


def test_duplicate_record_refused(tmp_path):
    store = RunStore.open(tmp_path, CONFIG, {})
    store.append(rec("a"))
    with pytest.raises(ValueError):
        store.append(rec("a"))


def test_torn_last_line_is_dropped_and_appends_continue(tmp_path):
    store = RunStore.open(tmp_path, CONFIG, {})
    store.append(rec("a"))
    store.append(rec("b"))
    path = tmp_path / SAMPLES
    full = path.read_bytes()
    path.write_bytes(full + b'{"role": "method", "prompt_id": "c", "new_to')  # killed mid-write
    store = RunStore.open(tmp_path, CONFIG, {})
    assert [r["prompt_id"] for r in store.records()] == ["a", "b"]
    assert path.read_bytes() == full
    store.append(rec("c"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["prompt_id"] for x in lines] == ["a", "b", "c"]


def test_corrupt_middle_line_is_an_error(tmp_path):
    RunStore.open(tmp_path, CONFIG, {}).append(rec("a"))
    path = tmp_path / SAMPLES
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(BenchError, match="line 1"):
        RunStore.open(tmp_path, CONFIG, {})


def test_different_config_refused(tmp_path):
    RunStore.open(tmp_path, CONFIG, {}).append(rec("a"))
    with pytest.raises(BenchError, match="different config.*max_new_tokens"):
        RunStore.open(tmp_path, CONFIG | {"max_new_tokens": 16}, {})
    assert (tmp_path / SAMPLES).read_text().count("\n") == 1  # nothing lost
