"""The run store: `manifest.json` (config + environment) and `samples.jsonl` (one line per finished generation).

Lines are appended and flushed (and fsynced) as each generation finishes. Reopening a run directory with the
same config resumes it: finished records are kept and skipped, a torn last line left by a kill is dropped, and a
different config is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import BenchError
from core.files import write_json

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"  # the summaries of the last (re)run, written by the runner


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
    """A run directory. Use `open()` to create or resume it."""

    def __init__(self, root: Path, config: dict[str, Any], records: list[dict[str, Any]]) -> None:
        self.root = root
        self.config = config
        self._done = {record_key(r): r for r in records}

    @classmethod
    def open(cls, root: Path | str, config: dict[str, Any], environment: dict[str, Any]) -> RunStore:
        """Create the run directory, or resume it when its manifest holds the same config."""
        root = Path(root)
        manifest_path = root / MANIFEST
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:
                raise BenchError(f"{manifest_path}: not valid JSON; remove it or use another --out") from None
            old = manifest.get("config", {})
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                details = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in diff[:4])
                raise BenchError(f"{root} holds a run with a different config ({details}); use another --out")
        else:
            root.mkdir(parents=True, exist_ok=True)
            manifest = {"config": config, "environment": environment}
            write_json(manifest_path, manifest)
        samples = root / SAMPLES
        records, good = read_samples(samples)
        if samples.exists() and samples.stat().st_size != good:
            with samples.open("r+b") as f:  # drop the torn tail so the next append starts on a fresh line
                f.truncate(good)
        return cls(root, config, records)

    def has(self, role: str, prompt_id: str) -> bool:
        return (role, prompt_id) in self._done

    def get(self, role: str, prompt_id: str) -> dict[str, Any] | None:
        return self._done.get((role, prompt_id))

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished record durably; a record already stored is never written twice."""
        key = record_key(record)
        if key in self._done:
            raise ValueError(f"record {key} is already stored")
        line = json.dumps(record, default=str) + "\n"
        with (self.root / SAMPLES).open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._done[key] = record

    def records(self, role: str | None = None) -> Iterator[dict[str, Any]]:
        return (r for r in self._done.values() if role is None or r["role"] == role)
