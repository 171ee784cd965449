"""The run store: durable appends, resume, torn-line recovery, corruption and config-mismatch refusal, one process
per run directory, and directories that cannot be written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.store import LOCK, SAMPLES, RunStore
from core.errors import BenchError
from methods.base import METHODS

ROOT = Path(__file__).resolve().parent.parent

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


def hold_lock(folder, *, stay: bool = True) -> subprocess.Popen:
    """Another process that opens a store on `folder` and (with `stay`) keeps it open until its stdin closes."""
    code = (
        "import sys\nfrom bench.store import RunStore\n"
        f"store = RunStore.open(sys.argv[1], {CONFIG!r}, {{}})\n"
        "print('locked', flush=True)\n" + ("sys.stdin.read()\n" if stay else "")
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_another_process_is_refused_with_the_holders_pid(tmp_path):
    holder = hold_lock(tmp_path / "run")
    try:
        assert (tmp_path / "run" / LOCK).read_text() == f"{holder.pid}\n"
        with pytest.raises(BenchError, match=rf"run is in use by another bench process \(pid {holder.pid}\)"):
            RunStore.open(tmp_path / "run", CONFIG, {})
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    assert not (tmp_path / "run" / LOCK).exists()  # a clean exit leaves no lock file behind
    with RunStore.open(tmp_path / "run", CONFIG, {}) as store:
        store.append(rec("a"))


def test_the_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = hold_lock(tmp_path / "run")
    holder.kill()
    holder.wait(timeout=30)
    assert (tmp_path / "run" / LOCK).read_text() == f"{holder.pid}\n"  # left behind by the kill
    store = RunStore.open(tmp_path / "run", CONFIG, {})
    assert (tmp_path / "run" / LOCK).read_text() == f"{os.getpid()}\n"
    store.close()
    assert not (tmp_path / "run" / LOCK).exists()


def another_process_can_lock(folder) -> bool:
    code = f"import sys\nfrom bench.store import RunStore\nRunStore.open(sys.argv[1], {CONFIG!r}, {{}}).close()\n"
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 or "in use by another bench process" in proc.stderr, proc.stderr
    return proc.returncode == 0


def test_one_process_may_reopen_its_own_directory(tmp_path):
    """A sweep's cells open the shared baseline run one after the other, in one process: the lock is this
    process's until its last store there closes."""
    first = RunStore.open(tmp_path, CONFIG, {})
    second = RunStore.open(tmp_path, CONFIG, {})
    first.close()
    first.close()  # closing twice releases once
    assert not another_process_can_lock(tmp_path)
    second.close()
    assert another_process_can_lock(tmp_path)


def test_a_directory_that_cannot_be_written_is_one_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(BenchError, match=r"cannot create or lock the run directory .*/file/run: .*file is a file"):
        RunStore.open(tmp_path / "file" / "run", CONFIG, {})
    with pytest.raises(BenchError, match="cannot create or lock the run directory"):
        RunStore.open(read_only_folder(tmp_path) / "run", CONFIG, {})


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in: a read-only directory, or (as root, whom permissions do
    not stop) a path in /proc."""
    if os.geteuid() == 0:
        return Path("/proc") / f"decodebench-{os.getpid()}"
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder


def test_a_failed_append_leaves_the_records_as_they_were(tmp_path, monkeypatch):
    """A disk that fills up mid-record: the part written is cut off again, the error says what is kept."""
    store = RunStore.open(tmp_path, CONFIG, {})
    store.append(rec("a"))
    before = (tmp_path / SAMPLES).read_bytes()
    real_write, calls = os.write, []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:20]))  # a short write, then no space
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(BenchError, match=r"samples.jsonl: No space left on device; the 1 records written before"):
        store.append(rec("b"))
    monkeypatch.undo()
    assert len(calls) == 2 and (tmp_path / SAMPLES).read_bytes() == before and not store.has("method", "b")
    store.append(rec("b"))
    assert [r["prompt_id"] for r in RunStore.open(tmp_path, CONFIG, {}).records()] == ["a", "b"]


def test_a_run_recorded_before_an_option_existed_resumes_only_at_its_default(tmp_path):
    old = {"method": "lookahead", "options": {"window": 5, "ngram": 3, "guess": 5}, "max_new_tokens": 8}
    RunStore.open(tmp_path, old, {}).append(rec("a"))
    now = METHODS.get("lookahead").Options().as_dict()  # the options gained since (budget=fixed, ...) at defaults
    again = RunStore.open(tmp_path, old | {"options": now}, {})
    assert [r["prompt_id"] for r in again.records()] == ["a"]
    again.close()
    for changed in ({"budget": "auto"}, {"window": 7}):  # a new option off its default, or an old one changed
        with pytest.raises(BenchError, match="different config"):
            RunStore.open(tmp_path, old | {"options": now | changed}, {})
