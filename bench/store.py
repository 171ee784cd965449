"""The run store: `manifest.json` (config + environment) and `samples.jsonl` (one line per finished generation).

Lines are appended and flushed (and fsynced) as each generation finishes. Reopening a run directory with the
same config resumes it: finished records are kept and skipped, a torn last line left by a kill is dropped, and a
different config is refused.

One process at a time uses a run directory: it holds an advisory lock (`flock`) on `.lock` there, a file that
names its pid, from before its models load until the run ends; another process is refused with one line naming
that pid. The kernel drops the lock when its holder dies, so the lock file a killed run leaves behind is taken
over; the same process may take the lock again (a sweep's cells share one baseline run). A directory that
cannot be created or written (a file in the way, a read-only folder, a full disk) is one `BenchError`, and a
failed append leaves the records already written as they were.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BenchError
from core.files import write_json

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"  # the summaries of the last (re)run, written by the runner
LOCK = ".lock"  # flock'ed by the process using the directory; holds its pid


@dataclass
class _Held:
    fd: int
    path: Path
    count: int
    created: bool  # the directory did not exist before: removed again at the end if nothing was written there


_HELD: dict[str, _Held] = {}  # run directory (real path) -> this process's lock on it
_HELD_GUARD = threading.Lock()
os.register_at_fork(after_in_child=_HELD.clear)  # a forked child holds nothing of its own


@atexit.register
def _release_all() -> None:
    """A process that exits without closing its stores leaves no lock file behind (a killed one does)."""
    with _HELD_GUARD:
        for held in _HELD.values():
            with contextlib.suppress(OSError):
                held.path.unlink()
        _HELD.clear()


class DirLock:
    """This process's hold on a run directory's lock (see the module doc); `release()` it, or use it as a
    context manager. Taking it creates the directory."""

    def __init__(self, key: str) -> None:
        self._key: str | None = key

    @classmethod
    def acquire(cls, root: Path | str) -> DirLock:
        root = Path(root)
        try:
            with _HELD_GUARD:
                for attempt in range(3):  # another process may remove the empty directory it had just made
                    created = not root.is_dir()
                    root.mkdir(parents=True, exist_ok=True)
                    key = os.path.realpath(root)
                    if key in _HELD:
                        _HELD[key].count += 1
                        break
                    try:
                        _HELD[key] = _Held(_lock(root, Path(key) / LOCK), Path(key) / LOCK, 1, created)
                        break
                    except FileNotFoundError:
                        if attempt == 2:
                            raise
        except OSError as exc:
            raise unwritable("cannot create or lock the run directory", root, exc) from None
        return cls(key)

    def release(self) -> None:
        """Let go (once); the last hold of this process removes the lock file and unlocks."""
        key, self._key = self._key, None
        if key is None:
            return
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count == 0:
                del _HELD[key]
                with contextlib.suppress(OSError):  # removed while locked: whoever opened it retries on a new file
                    held.path.unlink()
                os.close(held.fd)
                if held.created:
                    with contextlib.suppress(OSError):  # only when empty: a run that failed before writing anything
                        held.path.parent.rmdir()

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock(root: Path, path: Path) -> int:
    """Lock `path` (created if missing) for this process and write its pid there; BenchError when another
    process holds it."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise BenchError(
                f"{root} is in use by another bench process (pid {holder}); wait for it to end or use another --out"
            ) from None
        except OSError:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder let go and removed it meanwhile: lock the file now at `path`
    raise BenchError(f"{path}: could not be locked (it keeps changing)")


def _holder(fd: int) -> str:
    """The pid written in a lock file (its holder writes it just after locking: wait a moment for it)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if text:
            return text if text.isdigit() else "unknown"
        time.sleep(0.05)
    return "unknown"


def unwritable(what: str, path: Path, exc: OSError) -> BenchError:
    """One line for a path that cannot be created or written: which path, and the system's reason (a file in
    the way of a folder named as such)."""
    blocker = next((p for p in [path, *path.parents] if p.exists() or p.is_symlink()), None)
    if blocker is not None and blocker != path and not blocker.is_dir():
        return BenchError(f"{what} {path}: {blocker} is a file, not a folder")
    where = f"{exc.filename}: " if exc.filename and str(exc.filename) != str(path) else ""
    return BenchError(f"{what} {path}: {where}{exc.strerror or exc}")


def record_key(record: dict[str, Any]) -> tuple[str, str]:
    """Records are unique by (role, prompt id): role is "method" (the method under test) or "baseline" (AR)."""
    return record["role"], record["prompt_id"]


def read_samples(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse a samples file; returns its complete records and the byte length of that complete part.

    Every record ends with a newline. A tail without one is a torn write (killed mid-line) and is not counted;
    a complete line that does not parse is corruption and an error naming the line.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            raise BenchError(f"{path}: line {number} is not valid JSON (the file is corrupt)") from None
    return records, len(complete)


class RunStore:
    """A run directory, locked for this process while open. Use `open()` to create or resume it, and `close()`
    it (or use it as a context manager) when done."""

    def __init__(self, root: Path, config: dict[str, Any], records: list[dict[str, Any]], lock: DirLock) -> None:
        self.root = root
        self.config = config
        self._done = {record_key(r): r for r in records}
        self._lock = lock

    @classmethod
    def open(cls, root: Path | str, config: dict[str, Any], environment: dict[str, Any]) -> RunStore:
        """Create the run directory, or resume it when its manifest holds the same config."""
        root = Path(root)
        lock = DirLock.acquire(root)
        try:
            records = _open(root, config, environment)
        except BaseException:
            lock.release()
            raise
        return cls(root, config, records, lock)

    def close(self) -> None:
        """Release this store's hold on the directory lock (the records stay readable here)."""
        self._lock.release()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, role: str, prompt_id: str) -> bool:
        return (role, prompt_id) in self._done

    def get(self, role: str, prompt_id: str) -> dict[str, Any] | None:
        return self._done.get((role, prompt_id))

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished record durably; a record already stored is never written twice. A write that fails
        (a full disk) is undone and is a BenchError: the records before it stay as they were."""
        key = record_key(record)
        if key in self._done:
            raise ValueError(f"record {key} is already stored")
        data = memoryview((json.dumps(record, default=str) + "\n").encode("utf-8"))
        path = self.root / SAMPLES
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._failed(path, exc) from None
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # no torn line left behind
                    os.ftruncate(fd, start)
                raise self._failed(path, exc) from None
        finally:
            os.close(fd)
        self._done[key] = record

    def write_summary(self, summaries: list[dict[str, Any]]) -> None:
        """Write summary.json (atomically: the previous one stays if the write fails)."""
        try:
            write_json(self.root / SUMMARY, summaries)
        except OSError as exc:
            raise self._failed(self.root / SUMMARY, exc) from None

    def _failed(self, path: Path, exc: OSError) -> BenchError:
        kept = f"the {len(self._done)} records written before are kept; make room and run the same command to resume"
        return BenchError(f"cannot write {path}: {exc.strerror or exc}; {kept}")

    def records(self, role: str | None = None) -> Iterator[dict[str, Any]]:
        return (r for r in self._done.values() if role is None or r["role"] == role)


def _open(root: Path, config: dict[str, Any], environment: dict[str, Any]) -> list[dict[str, Any]]:
    """Check or write the manifest, drop a torn last line; the records finished so far."""
    manifest_path = root / MANIFEST
    try:
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:
                raise BenchError(f"{manifest_path}: not valid JSON; remove it or use another --out") from None
            old = manifest.get("config", {})
            if old != config and not _before_new_options(old, config):
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                details = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:4])
                raise BenchError(f"{root} holds a run with a different config ({details}); use another --out")
        else:
            write_json(manifest_path, {"config": config, "environment": environment})
        samples = root / SAMPLES
        records, good = read_samples(samples)
        if samples.exists() and samples.stat().st_size != good:
            with samples.open("r+b") as f:  # drop the torn tail so the next append starts on a fresh line
                f.truncate(good)
    except OSError as exc:
        raise unwritable("cannot write the run directory", root, exc) from None
    return records


def _before_new_options(old: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether `old` is this config recorded before the method gained options that `config` holds at their
    defaults (the same run: a new option's default keeps the old behaviour)."""
    before, now = old.get("options"), config.get("options")
    if not isinstance(before, dict) or not isinstance(now, dict) or old | {"options": now} != config:
        return False
    from methods.base import METHODS

    try:
        defaults = METHODS.get(config["method"]).Options().as_dict()
    except (BenchError, KeyError):
        return False
    added = set(now) - set(before)
    return all(now.get(k) == v for k, v in before.items()) and all(now[k] == defaults.get(k, object()) for k in added)
