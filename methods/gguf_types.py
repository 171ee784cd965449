"""The GGUF file llama.cpp runs for a target: the offline preset's own file (`native`), or one converted once from
it by llama.cpp's own quantizer (`llama_model_quantize`, allow_requantize) into the same cache folder.

Converting dequantizes the shipped quantized weights (Q4_1, Q4_K_M ...) and stores them in the new type: an F16 file
holds the same dequantized weights our torch loader uses (transformers dequantizes the same file to float32), rounded
to float16; bf16, q8_0 and q4_0 round or requantize them further. llama-cpp-python is imported only here, lazily, so
`bench list methods` works without the optional extra.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from types import ModuleType

from filelock import FileLock

from core.errors import BenchError
from core.models import LoadedModel
from core.presets import PRESETS, cache_dir

# --gguf-type -> llama.cpp's llama_ftype constant (LLAMA_FTYPE_<name>) and the converted file's name tag
CONVERSIONS = {"f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
GGUF_TYPES = ("native", *CONVERSIONS)
BUILD_MINUTES = 10  # building llama.cpp from the sdist on a 2-core CPU (pip install -e .[llamacpp])


def import_llama_cpp() -> ModuleType:
    """llama_cpp, with llama.cpp's own log quietened (errors only); a one-line BenchError when not installed."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise BenchError(
            f"llamacpp needs the optional extra: pip install -e .[llamacpp] (builds llama.cpp, about "
            f"{BUILD_MINUTES} minutes)"
        ) from exc
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # what Llama(verbose=False) sets
    return llama_cpp


def shipped_gguf(target: LoadedModel, method: str) -> Path:
    """The GGUF file an offline preset target was loaded from (`core.models.fetch` keeps it in the cache)."""
    artifact = target.artifact
    preset = artifact.get("preset")
    if artifact.get("source") != "pypi-gguf" or preset not in PRESETS:
        offline = ", ".join(name for name, p in PRESETS.items() if p.offline)
        spec = artifact.get("spec", "the target")
        raise BenchError(f"{method} runs an offline GGUF preset's own file ({offline}); {spec} is not one")
    path = cache_dir() / preset / "model.gguf"
    if not path.is_file():
        raise BenchError(f"{method}: the GGUF of {preset} is missing from the cache; delete {preset}'s cache folder "
                         "and load the preset again to fetch it")  # fmt: skip
    return path


def converted_path(source: Path, gguf_type: str) -> Path:
    """Where the `gguf_type` conversion of `source` lives: beside it, e.g. model-F16.gguf."""
    return source.with_name(f"{source.stem}-{gguf_type.upper()}.gguf")


def gguf_for(source: Path, gguf_type: str, threads: int) -> Path:
    """The file to run: `source` itself (native), else its conversion, made once (file lock, atomic rename)."""
    if gguf_type == "native":
        return source
    if gguf_type not in CONVERSIONS:
        raise BenchError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)} (got {gguf_type!r})")
    dest = converted_path(source, gguf_type)
    if dest.is_file():
        return dest
    with FileLock(str(dest.with_name(f".{dest.name}.lock"))):
        if not dest.is_file():
            _convert(source, dest, gguf_type, threads)
    return dest


def _convert(source: Path, dest: Path, gguf_type: str, threads: int) -> None:
    """Convert with llama.cpp's quantizer into a temporary file beside `dest`, then rename it into place."""
    llama_cpp = import_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{CONVERSIONS[gguf_type]}")
    params.allow_requantize = True  # the shipped weights are quantized: dequantize them first
    params.nthread = threads
    partial = dest.with_name(f".{dest.stem}.{os.getpid()}.gguf.partial")  # under the lock: this process's own
    try:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if code != 0:
            raise BenchError(f"llama.cpp could not convert {source.name} to {gguf_type} (llama_model_quantize {code})")
        os.replace(partial, dest)  # atomic: a complete file or none
    finally:
        partial.unlink(missing_ok=True)


def ftype_name(llama_cpp: ModuleType, model: object) -> str:
    """The weight type llama.cpp reads from a loaded model's file, e.g. "Q4_1", "F16" (llama_ftype_name)."""
    name = llama_cpp.llama_ftype_name(llama_cpp.llama_model_ftype(model)) or b"unknown"
    return name.decode().removeprefix("MOSTLY_")
