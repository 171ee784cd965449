"""`layerskip --skip-layers auto`: the skip set with the most measured tokens/s on a few calibration prompts,
searched once per model and dtype and cached as JSON (`<cache>/layerskip/<model>-<dtype>.json`).

The candidates are a handful of sets (not the Draft & Verify reference's Bayesian optimisation nor SWIFT's on-the-fly
random + Bayesian search, which both score by acceptance): SWIFT's starting set (every other layer, first and last
kept), every other layer of the second half, and contiguous blocks of a quarter, three eighths and half of the
layers, centred and ending before the last layer (the reference's searched sets skip mostly middle-to-late layers).
Each is timed (`time.perf_counter`) decoding greedily with `layerskip` on the calibration prompts; plain
autoregressive decoding is timed too and recorded for comparison. Calibration text: the first paragraphs of
`$DECODEBENCH_DATA/tiny_corpus` (training-side text, never evaluation data).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.errors import BenchError
from core.files import DATA_ENV, portable, write_json
from core.models import LoadedModel
from core.presets import cache_dir
from core.timing import Timer
from methods.decode import Drafter, StopRule, verify_loop

# (file under $DECODEBENCH_DATA, paragraphs taken): three calibration prompts
CALIBRATION = (("tiny_corpus/tinystories_sample.txt", 2), ("tiny_corpus/tinyshakespeare.txt", 1))
MIN_CHARS = 100  # a paragraph shorter than this is not a prompt (titles, speaker names)
MAX_CHARS = 600  # longer paragraphs are cut here
NEW_TOKENS = 32  # tokens decoded per calibration prompt

MakeDrafter = Callable[[tuple[int, ...]], Drafter]


def candidates(n_layers: int) -> list[tuple[int, ...]]:
    """The skip sets tried: distinct, non-empty, each keeping the first and the last layer."""
    inner = n_layers - 2  # layers 1 .. n_layers - 2 may be skipped
    sets = [tuple(range(1, n_layers - 1, 2)), tuple(range(n_layers // 2, n_layers - 1, 2))]
    for fraction in (0.25, 0.375, 0.5):
        size = min(inner, max(1, round(fraction * n_layers)))
        centred = 1 + (inner - size) // 2
        sets += [tuple(range(centred, centred + size)), tuple(range(n_layers - 1 - size, n_layers - 1))]
    return [s for i, s in enumerate(sets) if s and s not in sets[:i]]


def calibration_prompts(tokenizer: Any) -> list[list[int]]:
    """Token ids of the calibration prompts; a BenchError if the data is missing."""
    data = os.environ.get(DATA_ENV)
    prompts = []
    for name, count in CALIBRATION:
        path = Path(data) / name if data else None
        if path is None or not path.is_file():
            where = f"${DATA_ENV}/{name}" if data else f"${DATA_ENV} (not set)"
            raise BenchError(f"--skip-layers auto needs calibration text from {where}: point ${DATA_ENV} at the "
                             "data folder, or give the layers to skip (e.g. --skip-layers alternate)")  # fmt: skip
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        prompts += [p[:MAX_CHARS] for p in paragraphs if len(p) >= MIN_CHARS][:count]
    if not prompts:
        raise BenchError(f"--skip-layers auto: no paragraph of at least {MIN_CHARS} characters in the calibration text")
    return [tokenizer(text)["input_ids"] for text in prompts]


def tokens_per_s(model: Any, prompts: list[list[int]], make: Callable[[], Drafter | None]) -> float:
    """Tokens per second decoding `NEW_TOKENS` greedily after each prompt (a fresh drafter per prompt)."""
    device = next(model.parameters()).device
    tokens = 0
    start = time.perf_counter()
    for ids in prompts:
        tokens += len(verify_loop(model, ids, StopRule(NEW_TOKENS), Timer(device), make()).tokens)
    return tokens / (time.perf_counter() - start)


def cache_path(target: LoadedModel) -> Path:
    name = Path(str(target.artifact.get("spec", "model"))).name
    return cache_dir() / "layerskip" / f"{name}-{target.artifact.get('dtype', 'float32')}.json"


def search(target: LoadedModel, n_layers: int, make_drafter: MakeDrafter) -> dict[str, Any]:
    """Time every candidate (and AR) on the calibration prompts; the record, the fastest set under "skip"."""
    prompts = calibration_prompts(target.tokenizer)
    model = target.model
    tokens_per_s(model, prompts[:1], lambda: None)  # warm-up, untimed
    ar = tokens_per_s(model, prompts, lambda: None)
    scores = []
    for skip in candidates(n_layers):
        rate = tokens_per_s(model, prompts, lambda s=skip: make_drafter(s))
        scores.append({"skip": list(skip), "tokens_per_s": round(rate, 2)})
    best = max(scores, key=lambda s: s["tokens_per_s"])
    files = [portable(Path(os.environ[DATA_ENV]) / name) for name, _ in CALIBRATION]
    return {"skip": best["skip"], "layers": n_layers, "candidates": scores, "ar_tokens_per_s": round(ar, 2),
            "calibration": files, "prompts": len(prompts), "new_tokens": NEW_TOKENS, "device": str(target.device),
            "threads": torch.get_num_threads()}  # fmt: skip


def resolve(target: LoadedModel, n_layers: int, make_drafter: MakeDrafter, settings: dict[str, Any]) -> dict[str, Any]:
    """The cached search record of this model and dtype, else a new search's (recorded with `settings`: the
    method's options it ran with); the skip set is its "skip". An entry made for another layer count is redone."""
    if not candidates(n_layers):
        raise BenchError(f"--skip-layers auto needs at least 3 decoder layers (it keeps the first and the last); "
                         f"the model has {n_layers}")  # fmt: skip
    path = cache_path(target)
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if record.get("layers") == n_layers and all(isinstance(i, int) for i in record["skip"]):
                return record
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: search again and overwrite it
    record = search(target, n_layers, make_drafter) | {"settings": settings}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    return record
