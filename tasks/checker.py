"""Scoring untrusted code so that it cannot forge its verdict: the code under test and its tests in two sandboxed
processes (`tasks.sandbox`), each under its own fresh uid (as root).

The candidate process runs the untrusted source as its `__main__`, then answers calls of its function on one end
of a socket pair. The checker process, whose program arrives on its stdin (no file, no command line the candidate
could read), runs the trusted tests, calls that function across the socket (`tasks.wire`: plain data only) and
prints the pass line only after `check` returned. Nothing in the candidate's process can produce that line: it
holds no secret to find, and the checker's memory, descriptors, output files and signals are out of its reach.
docs/sandbox.md has the threat model.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import socket
import tempfile
from pathlib import Path

from core.errors import BenchError
from tasks import sandbox
from tasks.sandbox import ExecResult, Isolation
from tasks.wire import ENDED

CHECK_PASSED = "decodebench-check-passed"  # the checker's last line when `check` returned (public: not a secret)


def run_check(
    candidate: str, entry_point: str, tests: str, timeout_s: float = 10.0, memory_mb: int = 1024, max_procs: int = 64
) -> ExecResult:
    """Score untrusted `candidate` source, which defines the function `entry_point`, with trusted `tests`, source
    that defines `check(candidate)`; it passes when `check` returns.

    Two sandboxed processes, each under its own fresh uid: the candidate's code runs as its `__main__` and then
    answers calls of its function; the checker (its program fed on its stdin) runs the tests, calling that function
    across a socket (`tasks.wire`: plain data only), and prints the pass line only after `check` returned. Nothing
    in the candidate's process can produce that line: the checker holds no secret the candidate could find, and the
    candidate cannot reach the checker's memory, files, output or signals. The time limit covers both; limits
    apply to each. Never raises for anything the candidate does; raises BenchError when no process can be started.
    """
    return _run_check(candidate, entry_point, tests, sandbox.current_isolation(), timeout_s, memory_mb, max_procs)


def _run_check(
    candidate: str, entry_point: str, tests: str, iso: Isolation, timeout_s: float, memory_mb: int, max_procs: int
) -> ExecResult:
    if not entry_point.isidentifier():
        raise BenchError(f"the entry point {entry_point!r} is not a Python name")
    candidate_uid, checker_uid = sandbox.fresh_uids(iso, 2)
    limits = sandbox.rlimits(timeout_s, memory_mb, max_procs)
    with tempfile.TemporaryDirectory(prefix="decodebench-sandbox-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # each uid may reach its own files and work dir, not list or write root
        checker_end, candidate_end = socket.socketpair()
        with checker_end, candidate_end:  # the two ends live in the two processes only; closed here after starting
            candidate_fd, checker_fd = candidate_end.fileno(), checker_end.fileno()
            program = _candidate_program(candidate, entry_point, candidate_fd, iso.netns)
            (root / "candidate.py").write_text(program, encoding="utf-8")
            argv = [iso.python, "-I", "-B", str(root / "candidate.py")]
            candidate_proc = sandbox.start(argv, iso, candidate_uid, limits, root / "candidate", (candidate_fd,))
            try:  # the checker's program comes on its stdin: no file, no command line the candidate could read
                argv = [iso.python, "-I", "-B", "-"]
                checker = sandbox.start(argv, iso, checker_uid, limits, root / "checker", (checker_fd,), True)
            except BenchError:
                sandbox.wait_and_kill([(candidate_proc, candidate_uid)], iso, 0)
                raise
        procs = [(checker, checker_uid), (candidate_proc, candidate_uid)]
        try:  # a checker that died early fails below
            checker.stdin.write(_checker_program(tests, entry_point, checker_fd).encode("utf-8"))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                checker.stdin.close()
        finished, (returncode, _) = sandbox.wait_and_kill(procs, iso, timeout_s)
        stdout, stderr = sandbox.tail(root / "checker.out"), sandbox.tail(root / "checker.err")
        candidate_stderr = sandbox.tail(root / "candidate.err")
    if not finished:
        return ExecResult(False, "timeout", f"still running after {timeout_s:g} s")
    if returncode < 0:
        return ExecResult(False, "killed", f"signal {-returncode} ({signal.strsignal(-returncode)})")
    if returncode == 0 and stdout.splitlines()[-1:] == [CHECK_PASSED]:
        return ExecResult(True, "passed", "")
    detail = sandbox.failure_detail(returncode, stderr)
    last = sandbox.last_line(candidate_stderr) if ENDED in detail else ""  # why it ended, if it said
    return ExecResult(False, "failed", detail + (f" [candidate: {last[:200]}]" if last else ""))


def _candidate_program(candidate: str, entry_point: str, fd: int, netns: bool) -> str:
    """The candidate's code as its own `__main__`, then a loop that answers the checker's calls of its function."""
    serve = (
        "import types as _decodebench_types\n"
        "_decodebench_wire = _decodebench_types.ModuleType('decodebench_wire')\n"
        f"exec(compile({_wire_source()!r}, 'decodebench_wire.py', 'exec'), _decodebench_wire.__dict__)\n"
        f"_decodebench_wire.serve({fd}, {entry_point})\n"
    )
    return ("" if netns else sandbox.SOCKET_GUARD) + candidate + "\n" + serve


def _checker_program(tests: str, entry_point: str, fd: int) -> str:
    """Trusted: the tests in a namespace of their own, `check` called on the candidate across the wire (also bound
    to the entry point's name, which tests may use), then the pass line."""
    return (
        "import types\n"
        "wire = types.ModuleType('decodebench_wire')\n"
        f"exec(compile({_wire_source()!r}, 'decodebench_wire.py', 'exec'), wire.__dict__)\n"
        "namespace = {'__name__': '__main__'}\n"
        f"exec(compile({tests!r}, 'check.py', 'exec'), namespace)\n"
        f"candidate = wire.Candidate({fd}, {entry_point!r})\n"
        f"namespace[{entry_point!r}] = candidate\n"
        "namespace['check'](candidate)\n"
        f"print({CHECK_PASSED!r}, flush=True)\n"
    )


@functools.cache
def _wire_source() -> str:
    return Path(__file__).with_name("wire.py").read_text(encoding="utf-8")
