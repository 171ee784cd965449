"""The models of a run: the full-precision target (the AR baseline's, and the exactness audit's reference), the
target the method decodes with (a quantized copy under `--quant`), and the draft (a model, or the target itself with
`--draft self`, quantized under `--draft-quant`). Every scheme is checked before anything loads."""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from core import models, quant
from core.errors import BenchError

SELF_DRAFT = "self"  # `--draft self`: the target's own weights draft (with `--draft-quant`, a quantized copy)


@dataclass
class RunModels:
    """The loaded models of a run and what the manifest records of their quantization."""

    target: models.LoadedModel  # full precision: the baseline lane's
    method_target: models.LoadedModel  # the method lane's: `target` itself unless `--quant`
    draft: models.LoadedModel | None = None
    quant: dict[str, Any] = field(default_factory=dict)  # "target" / "draft": core.quant.quantize's records


def check(config: Any) -> None:
    """Refuse (one line) a quantization the device has no kernel for, or a combination the harness cannot run."""
    dtype = models.resolve_dtype(config.dtype)
    for flag, scheme in (("--quant", config.quant), ("--draft-quant", config.draft_quant)):
        if scheme != "none":
            quant.check(scheme, config.device, dtype)
            if config.kernels != "aten":
                raise BenchError(f"{flag} {scheme} brings its own kernels: drop --kernels {config.kernels}")
            if config.device_map:
                raise BenchError(f"{flag} does not support --device-map")
    if config.draft_quant != "none" and not config.draft:
        raise BenchError("--draft-quant needs a draft model (--draft PRESET|self)")


def quantized(loaded: models.LoadedModel, scheme: str) -> tuple[models.LoadedModel, dict[str, Any]]:
    """A quantized copy of `loaded` (the original untouched) and the record of its quantization."""
    model = quant.quantized_copy(loaded.model, scheme)
    record = model.quant_record
    return replace(loaded, model=model, artifact=loaded.artifact | {"quant": record}), record


def load(config: Any) -> RunModels:
    """Load the target once in full precision, then derive the method's target and the draft from the config
    (a resolved one: `RunConfig.resolve` has run `check`)."""
    target = models.load(config.model, config.dtype, config.device, config.device_map, config.kernels)
    out = RunModels(target, target)
    if config.quant != "none":
        out.method_target, out.quant["target"] = quantized(target, config.quant)
    if config.draft == SELF_DRAFT:
        out.draft = target
        if config.draft_quant != "none":
            out.draft, out.quant["draft"] = quantized(target, config.draft_quant)
    elif config.draft:
        out.draft = models.load(config.draft, config.dtype, config.device, kernels=config.kernels)
        if config.draft_quant != "none":
            out.quant["draft"] = quant.quantize(out.draft.model, config.draft_quant)
    return out


def peak_memory(device: torch.device) -> dict[str, float]:
    """The process's peak so far: resident set on CPU (every lane's models, and the perplexity or bandwidth
    measurements if taken before), allocated memory on CUDA."""
    if device.type == "cuda":
        return {"peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return {"peak_rss_mb": peak / (2**20 if sys.platform == "darwin" else 2**10)}


def model_bytes(run_models: RunModels, role: str) -> int:
    """The bytes a lane's models store: its target, plus the draft for the method lane (a self-draft that is not
    quantized is the target itself, counted once)."""
    target = run_models.target if role == "baseline" else run_models.method_target
    held = [target.model] + ([run_models.draft.model] if role == "method" and run_models.draft is not None else [])
    return sum(quant.storage_bytes(m) for m in {id(m): m for m in held}.values())
