"""Run untrusted Python (model-written code) in a throwaway, locked-down process.

Layers, each verified by `bench task check humaneval` and tests/test_sandbox.py:
- a child `python -I -B` (this interpreter, or the system one when the sandbox user cannot reach this one) in
  its own session, killed as a whole process group (and, under root, every process of its user) when it ends
  or overruns the wall-clock limit;
- rlimits: address space, CPU time, processes, file size, no core files, few open files;
- under root, the child runs as a fresh unprivileged uid (one per run, so concurrent runs never share an
  RLIMIT_NPROC budget or can signal each other): it cannot signal the harness or touch root-owned files;
- where permitted, an empty network namespace (no interfaces up, so no network at all) and a private mount
  namespace in which every mount is read-only except a small tmpfs work dir (world-writable /tmp, /var/tmp and
  /dev/shm included); where not, a guard in the program that disables `socket.socket` (defense in depth only:
  the program can undo it).
Verdict integrity (what scores HumanEval) is `tasks.checker.run_check`, built on these processes: the code under
test and its tests run in two of them, each under its own uid. `run_program`'s verdict is one the program can
forge. docs/sandbox.md has the threat model.
`isolation_report()` says which layers are active. Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import BenchError

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
SYS_MOUNT_SETATTR = 442  # the same number on every Linux architecture
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_PRIVATE = 1 << 18
UID_BASE, UID_SPAN = 2_100_000_000, 40_000_000  # per-run uids: far above any account or id-mapping range
WORK_MB = 32  # size of the tmpfs work dir (when the mount namespace is available)
FSIZE_MB = 10
NOFILE = 64
TAIL_BYTES = 4096
SOCKET_GUARD = (
    "import socket as _sandbox_socket\n"
    "class _NoNetwork(_sandbox_socket.socket):\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        raise OSError('network access is disabled in the sandbox')\n"
    "_sandbox_socket.socket = _NoNetwork\n"
    "del _sandbox_socket, _NoNetwork\n"
)


@dataclass(frozen=True)
class ExecResult:
    """How a sandboxed program ended: status is "passed", "failed", "timeout" or "killed" (by a signal)."""

    passed: bool
    status: str
    detail: str


@dataclass(frozen=True)
class Isolation:
    """The interpreter and the layers a run uses beyond rlimits and process-group killing."""

    python: str  # an interpreter the sandbox user may run
    drop_privileges: bool  # run as a fresh unprivileged uid (needs root)
    netns: bool  # empty network namespace; else the socket guard
    readonly_fs: bool  # private mount namespace, all read-only but a tmpfs work dir


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


_libc = ctypes.CDLL(None, use_errno=True)


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, max_procs: int = 64) -> ExecResult:
    """Run `source` sandboxed; it passes when it exits 0 after running to its last line (early exits fail).

    Contained like any run, but the verdict is only as honest as the program: "ran to its last line" is a line the
    harness appends to the program itself, which hostile code can read and print. Score untrusted code with
    `tasks.checker.run_check`. Never raises for anything the program does; raises BenchError only when no process can
    be started.
    """
    return _run(source, _isolation(), timeout_s, memory_mb, max_procs)


def isolation_report() -> dict[str, str]:
    """Which isolation layers are active on this machine (probed once)."""
    iso = _isolation()
    return {
        "python": iso.python,
        "user": "a fresh unprivileged uid per process"
        if iso.drop_privileges
        else "the caller's own user (not root): the program could signal the harness",
        "network": "empty network namespace"
        if iso.netns
        else "socket guard in the program only (defense in depth, not a boundary)",
        "filesystem": f"read-only except a {WORK_MB} MB tmpfs work dir"
        if iso.readonly_fs
        else "ordinary permissions (world-writable dirs such as /tmp stay writable)",
        "verdict": "a separate checker process under its own uid runs the tests and calls the candidate over a "
        "socket; nothing in the candidate's process can produce a pass"
        if iso.drop_privileges
        else "a separate checker process, but under the candidate's own user: the candidate could tamper with it",
    }


def sandbox_processes() -> list[int]:
    """Pids of live (not zombie) processes running as a sandbox uid: there should be none between runs."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines())
        except OSError:  # exited meanwhile
            continue
        uid = int(status["Uid"].split()[0])
        if UID_BASE <= uid < UID_BASE + UID_SPAN and not status["State"].strip().startswith("Z"):
            pids.append(int(entry.name))
    return pids


def current_isolation() -> Isolation:
    """The isolation runs use on this machine (probed once)."""
    return _isolation()


@functools.cache
def _isolation() -> Isolation:
    """Probe what works here: this interpreter, else the system one (this one may sit under an unreadable /root)."""
    root = os.geteuid() == 0
    candidates = [sys.executable, shutil.which("python3", path="/usr/bin:/bin")]
    python = next((p for p in candidates if p and _works(Isolation(p, root, netns=False, readonly_fs=False))), None)
    if python is None:
        raise BenchError(f"the sandbox user cannot run any of these Python interpreters: {candidates}")
    netns = _works(Isolation(python, root, netns=True, readonly_fs=False))
    readonly_fs = _works(Isolation(python, root, netns=False, readonly_fs=True))
    return Isolation(python, root, netns, readonly_fs)


def _works(iso: Isolation) -> bool:
    try:
        return _run("pass", iso, timeout_s=30.0, memory_mb=256, max_procs=8).passed
    except BenchError:
        return False


def _run(source: str, iso: Isolation, timeout_s: float, memory_mb: int, max_procs: int) -> ExecResult:
    sentinel = f"sandbox-finished-{secrets.token_hex(16)}"
    program = ("" if iso.netns else SOCKET_GUARD) + source + f"\nprint({sentinel!r}, flush=True)\n"
    (uid,) = fresh_uids(iso, 1)
    with tempfile.TemporaryDirectory(prefix="decodebench-sandbox-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # the uid may reach main.py and its work dir, not list or write root
        (root / "main.py").write_text(program, encoding="utf-8")
        limits = rlimits(timeout_s, memory_mb, max_procs)
        proc = start([iso.python, "-I", "-B", str(root / "main.py")], iso, uid, limits, root / "main")
        finished, (returncode,) = wait_and_kill([(proc, uid)], iso, timeout_s)
        stdout, stderr = tail(root / "main.out"), tail(root / "main.err")
    if not finished:
        return ExecResult(False, "timeout", f"still running after {timeout_s:g} s")
    if returncode < 0:
        return ExecResult(False, "killed", f"signal {-returncode} ({signal.strsignal(-returncode)})")
    if returncode == 0 and sentinel in stdout.splitlines():
        return ExecResult(True, "passed", "")
    return ExecResult(False, "failed", failure_detail(returncode, stderr))


def fresh_uids(iso: Isolation, count: int) -> list[int]:
    """`count` distinct fresh uids (root), else the caller's own uid `count` times."""
    if not iso.drop_privileges:
        return [os.getuid()] * count
    uids: list[int] = []
    while len(uids) < count:
        uid = UID_BASE + secrets.randbelow(UID_SPAN)
        uids += [] if uid in uids else [uid]
    return uids


def rlimits(timeout_s: float, memory_mb: int, max_procs: int) -> list[tuple[int, int]]:
    return [
        (resource.RLIMIT_AS, memory_mb << 20),
        (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1),
        (resource.RLIMIT_NPROC, max_procs),
        (resource.RLIMIT_FSIZE, FSIZE_MB << 20),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, NOFILE),
    ]


def start(
    argv: list[str],
    iso: Isolation,
    uid: int,
    limits: list[tuple[int, int]],
    stem: Path,
    pass_fds: tuple[int, ...] = (),
    stdin_pipe: bool = False,
) -> subprocess.Popen:
    """Start one sandboxed process in its own session, as `uid`, in a fresh work dir `STEM-work`; its stdout and
    stderr go to `STEM.out` and `STEM.err` (readable by the harness only)."""
    work = stem.with_name(stem.name + "-work")
    work.mkdir(mode=0o700)
    if iso.drop_privileges:
        os.chown(work, uid, uid)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    setup = _child_setup(iso, str(work), uid, limits)
    with _private(stem.with_suffix(".out")) as out, _private(stem.with_suffix(".err")) as err:
        try:
            return subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=setup,
                pass_fds=pass_fds,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BenchError(f"the sandbox could not start a process: {exc}") from exc


def _private(path: Path):
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def wait_and_kill(
    procs: list[tuple[subprocess.Popen, int]], iso: Isolation, timeout_s: float
) -> tuple[bool, list[int]]:
    """Whether the first process ended within the limit; then every process (and all of their uids' processes)
    is killed and reaped. Returns that and their exit codes."""
    try:
        finished = _wait_unreaped(procs[0][0].pid, timeout_s)
    finally:
        for proc, uid in procs:
            _kill_all(proc.pid, uid if iso.drop_privileges else None)
    return finished, [proc.wait() for proc, _ in procs]


def failure_detail(returncode: int, stderr: str) -> str:
    last = last_line(stderr)
    early = " before its last line" if returncode == 0 else ""
    return f"exit {returncode}{early}" + (f": {last[:200]}" if last else "")


def last_line(text: str) -> str:
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def _child_setup(iso: Isolation, work: str, uid: int, limits: list[tuple[int, int]]) -> Callable[[], None]:
    """The preexec_fn: runs in the child between fork and exec, so it only uses values prepared here."""
    nice = str(os.getpriority(os.PRIO_PROCESS, 0)).encode()
    flags = (CLONE_NEWNET if iso.netns else 0) | (CLONE_NEWNS if iso.readonly_fs else 0)
    readonly = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, MS_PRIVATE, 0)
    tmpfs_options = f"size={WORK_MB}m,nr_inodes=1024,mode=0700,uid={uid},gid={uid}".encode()
    mountpoint = work.encode()

    def setup() -> None:
        # setsid put the child in a new scheduler autogroup at normal priority: keep the caller's niceness
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            try:
                os.write(fd, nice)
            finally:
                os.close(fd)
        if flags:
            _check(_libc.unshare(flags))
        if iso.readonly_fs:
            _check(
                _libc.syscall(
                    ctypes.c_long(SYS_MOUNT_SETATTR),
                    ctypes.c_int(AT_FDCWD),
                    ctypes.c_char_p(b"/"),
                    ctypes.c_uint(AT_RECURSIVE),
                    ctypes.byref(readonly),
                    ctypes.c_size_t(ctypes.sizeof(readonly)),
                )
            )
            _check(_libc.mount(b"tmpfs", mountpoint, b"tmpfs", ctypes.c_ulong(MS_NOSUID | MS_NODEV), tmpfs_options))
            os.chdir(work)  # the cwd set by Popen is the directory now hidden under the tmpfs
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        if iso.drop_privileges:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return setup


def _check(returned: int) -> None:
    if returned != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Whether the process exited within the limit; it stays a zombie, so its pid (and group id) cannot be reused."""
    pidfd = os.pidfd_open(pid)
    try:
        return bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)


def _kill_all(pid: int, uid: int | None) -> None:
    """SIGKILL the program's process group, then (given its uid) every process of that uid, group-hoppers too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if uid is None:
        return
    child = os.fork()
    if child == 0:  # as that uid, kill(-1) reaches exactly its processes, atomically (no fork slips through)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")
