"""The sandbox that scores HumanEval: correct programs pass, everything else fails, and hostile code is contained."""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
import time
from pathlib import Path

import pytest

from tasks import sandbox
from tasks.base import Sample
from tasks.humaneval import Containment, HumanEval, execute, hostile_check
from tasks.sandbox import run_program, sandbox_processes
from tests.conftest import REAL_DATA
from tests.test_cli import bench

SMALL = {"memory_mb": 256, "max_procs": 16}
PROBLEMS = [
    {
        "task_id": "T/0",
        "prompt": 'def inc(x: int) -> int:\n    """Return x + 1."""\n',
        "canonical_solution": "    return x + 1\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n",
        "entry_point": "inc",
    },
    {
        "task_id": "T/1",
        "prompt": 'def double(x: int) -> int:\n    """Return 2 * x."""\n',
        "canonical_solution": "    return 2 * x\n",
        "test": "def check(candidate):\n    assert candidate(3) == 6\n",
        "entry_point": "double",
    },
    {
        "task_id": "T/2",
        "prompt": 'def first(xs: list) -> object:\n    """The first item of xs."""\n',
        "canonical_solution": "    return xs[0]\n",
        "test": "def check(candidate):\n    assert candidate([7, 8]) == 7\n",
        "entry_point": "first",
    },
]


@pytest.fixture
def isolated() -> None:
    """Skip where containment cannot hold: not root, or no permission for network and mount namespaces."""
    iso = sandbox._isolation()
    if not (iso.drop_privileges and iso.netns and iso.readonly_fs):
        pytest.skip(f"the sandbox is not fully isolated here: {sandbox.isolation_report()}")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "humaneval").mkdir()
    with gzip.open(tmp_path / "humaneval" / "HumanEval.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in PROBLEMS)
    return tmp_path


def test_passing_program_passes():
    result = run_program("import math\nassert math.sqrt(4) == 2\nprint('hello')")
    assert result == sandbox.ExecResult(True, "passed", "")


def test_failing_assertion_fails():
    result = run_program("assert 1 + 1 == 3, 'bad sum'")
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError: bad sum" in result.detail


def test_syntax_error_fails():
    assert run_program("def broken(:\n").status == "failed"


def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=2.0, **SMALL)
    assert (result.passed, result.status) == (False, "timeout")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"])
def test_exit_0_before_the_end_is_not_a_pass(exit_call):
    result = run_program(f"{exit_call}\nassert False\n")
    assert (result.passed, result.status) == (False, "failed")
    assert "before its last line" in result.detail


def test_hostile_completions_are_contained(isolated):
    problem = PROBLEMS[0]
    sample = Sample(problem["task_id"], problem["prompt"], problem["canonical_solution"], meta=problem)
    cases = hostile_check(sample, workers=2, timeout_s=2.0, **SMALL)
    assert len(cases) == 11
    escaped = [c for c in cases if not c.contained]
    assert not escaped, escaped


def test_processes_that_leave_the_group_are_killed_too(isolated):
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
    assert run_program(program, timeout_s=5.0, **SMALL).passed
    deadline = time.monotonic() + 5
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sandbox_processes() == []


def test_socket_guard_when_no_network_namespace(monkeypatch):
    without_netns = dataclasses.replace(sandbox._isolation(), netns=False)
    monkeypatch.setattr(sandbox, "_isolation", lambda: without_netns)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    assert result.status == "failed" and "network access is disabled" in result.detail


def test_score_pass_at_1(data_dir):
    task = HumanEval(data_dir)
    samples = task.load()
    outputs = [
        "    return x + 1\n\ndef unrelated():\n    pass",  # correct, generation ran past a stop string
        "    return x + 2\n",  # wrong
        "    return xs[0]\n",  # correct
    ]
    assert task.score(samples, outputs) == {"pass@1": pytest.approx(100 * 2 / 3)}
    assert task.score([], []) == {}


@pytest.mark.skipif(not (REAL_DATA / "humaneval" / "HumanEval.jsonl.gz").is_file(), reason="no HumanEval data")
def test_real_canonical_solutions_pass():
    samples = HumanEval(REAL_DATA).load()
    results = execute(samples, [s.reference for s in samples], workers=2)
    failed = [(s.id, r) for s, r in zip(samples, results, strict=True) if not r.passed]
    assert len(samples) == 164 and not failed, failed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown task 'nope'"),
        (["mtbench"], "has no check"),
        (["humaneval", "--data-dir", "/no/such/dir"], "does not exist"),
        (["humaneval", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_task_check_bad_input(monkeypatch, capsys, data_dir, args, message):
    extra = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
    code, _, err = bench(monkeypatch, capsys, "task", "check", *args, *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_task_check_exit_code(monkeypatch, capsys, data_dir):
    """Exit 0 when all canonical solutions pass and every hostile case is contained, else 1 (hostile cases faked)."""
    args = ["task", "check", "humaneval", "--data-dir", str(data_dir)]
    contained = Containment("fake case", True, "failed")
    monkeypatch.setattr("tasks.humaneval.hostile_check", lambda sample, workers: [contained])
    code, out, _ = bench(monkeypatch, capsys, *args)
    assert code == 0 and "canonical solutions: 3/3 passed" in out and "hostile cases: 1/1 contained" in out
    assert out.rstrip().endswith("humaneval check: OK")

    escaped = dataclasses.replace(contained, contained=False)
    monkeypatch.setattr("tasks.humaneval.hostile_check", lambda sample, workers: [escaped])
    code, out, _ = bench(monkeypatch, capsys, *args)
    assert code == 1 and "hostile fake case: NOT CONTAINED" in out
