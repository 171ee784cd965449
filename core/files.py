"""Reading data files and writing result files: the one place that turns a bad file into a `BenchError` naming
it, and the one atomic write (a complete file or the old one, never a torn one)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import BenchError

DATA_ENV = "DECODEBENCH_DATA"  # the task data folder when --data-dir is not given (layout: docs/data.md)

# What a corrupt, truncated or mis-encoded file raises while it is read or decompressed.
DECODE_ERRORS = (gzip.BadGzipFile, zlib.error, EOFError, UnicodeDecodeError)


def atomic_write(path: Path, content: str | Callable[[Path], None]) -> None:
    """Write `path` through a temporary file and a rename: `content` is the text, or a function that writes a
    given path (torch.save, safetensors' save_file ...). On failure the temporary file is removed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk leaves no half-written temporary file behind
            tmp.unlink()
        raise


def portable(path: Path | str) -> str:
    """A path as results may record it (never a machine's absolute path): relative to the working folder when
    inside it, `$DECODEBENCH_DATA/...` inside the data folder, else the last part of the path alone."""
    path = Path(path).resolve()
    data = os.environ.get(DATA_ENV)
    for root, prefix in ((Path.cwd(), ""), (Path(data).resolve() if data else None, f"${DATA_ENV}")):
        if root is not None and path.is_relative_to(root):
            return str(Path(prefix) / path.relative_to(root)) if prefix else str(path.relative_to(root))
    return path.name


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Atomically write `data` as indented JSON (non-JSON values as strings)."""
    atomic_write(path, json.dumps(data, indent=1, default=str))


def read_json(path: Path) -> Any:
    """A JSON file's content; a missing or unreadable file is a `BenchError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{path} does not exist") from None
    except (ValueError, *DECODE_ERRORS):
        raise BenchError(f"{path}: not valid JSON") from None


def read_jsonl(path: Path, required: tuple[str, ...], limit: int | None = None) -> list[dict[str, Any]]:
    """Records from a jsonl (or jsonl.gz) file, each checked for the required fields; errors name file and line."""
    if not path.is_file():
        raise BenchError(f"data file {path} does not exist")
    records: list[dict[str, Any]] = []
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):  # noqa: B007  (the line number is reported on errors)
                if not line.strip():
                    continue
                records.append(_record(path, number, line, required))
                if limit is not None and len(records) >= limit:
                    break
    except DECODE_ERRORS as exc:
        what = "not a valid gzip file" if isinstance(exc, gzip.BadGzipFile | zlib.error | EOFError) else "not UTF-8"
        raise BenchError(f"{path}: {what} (at line {number + 1}); the file is corrupt") from None
    return records


def _record(path: Path, number: int, line: str, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        raise BenchError(f"{path}: line {number} is not valid JSON") from None
    missing = [k for k in required if not isinstance(record, dict) or k not in record]
    if missing:
        raise BenchError(f"{path}: line {number} lacks field(s) {', '.join(missing)}")
    return record
