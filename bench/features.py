"""The frozen LLM's features of training prompts, computed once: in memory for a run, and with `--cache-features`
on disk for every later run of the same LLM, dtype and layer.

The LLM is never trained, so its representation of a prompt never changes: encoding each prompt once, instead of at
every epoch and every evaluation, takes the LLM out of the training step. On disk a prompt's features live in
`<model cache>/llm-features/<LLM key>-<dtype>-layer<L>/<sha256 of the prompt ids>.safetensors`. The LLM key is the
artifact's sha256 (presets), its hub id and revision, or the sha256 of a local folder's weight files, so features
of other weights are never read back. Features are computed in batches of the prompts a step asks for (right
padded, as in training without the cache), so they are the same numbers with and without the cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from core.files import atomic_write
from core.presets import cache_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def artifact_key(artifact: dict[str, Any]) -> str:
    """A short name for the weights an artifact record describes (see the module docstring)."""
    if artifact.get("sha256"):
        return str(artifact["sha256"])[:16]
    if artifact.get("source") == "local":
        digest = hashlib.sha256()
        for file in sorted(Path(artifact["spec"]).rglob("*")):
            if file.suffix in WEIGHT_SUFFIXES and file.is_file():
                with file.open("rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 24), b""):
                        digest.update(block)
        return digest.hexdigest()[:16]
    named = {k: artifact.get(k) for k in ("hub_id", "revision", "preset", "spec")}
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:16]


def features_folder(artifact: dict[str, Any], layer: int) -> Path:
    """Where the features of this LLM artifact (and dtype) at `layer` are kept."""
    name = f"{artifact_key(artifact)}-{artifact.get('dtype', 'float32')}-layer{layer}"
    return cache_dir() / "llm-features" / name


def prompt_key(prompt: list[int]) -> str:
    return hashlib.sha256(torch.tensor(prompt, dtype=torch.int64).numpy().tobytes()).hexdigest()


class FeatureCache:
    """The LLM's features of each example prompt, encoded on first use by `encode` (a list of prompts -> a list
    of (length, hidden) tensors) and kept in memory, and on disk under `folder` when one is given."""

    def __init__(self, encode: Any, prompts: list[list[int]], dtype: torch.dtype, folder: Path | None = None) -> None:
        self.encode = encode
        self.prompts = prompts
        self.dtype = dtype  # what the features are used in (the SLM's dtype)
        self.folder = folder
        self.features: dict[int, torch.Tensor] = {}
        self.encoded = 0  # prompts this cache had the LLM encode (the rest came from memory or disk)

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        missing = [i for i in dict.fromkeys(indices) if i not in self.features and not self._read(i)]
        if missing:
            encoded = self.encode([self.prompts[i] for i in missing])
            self.encoded += len(missing)
            for i, features in zip(missing, encoded, strict=True):
                self.features[i] = features
                self._write(i, features)
        return [self.features[i] for i in indices]

    def _file(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{prompt_key(self.prompts[index])}.safetensors"

    def _read(self, index: int) -> bool:
        """Load the features of example `index` from disk; False when not there (or no folder, or a torn file)."""
        if self.folder is None or not self._file(index).is_file():
            return False
        from safetensors.torch import load_file

        try:
            features = load_file(self._file(index))["features"]
        except Exception:  # a file another process is writing, or a torn one: encode again
            return False
        if len(features) != len(self.prompts[index]):
            return False
        self.features[index] = features.to(self.dtype)
        return True

    def _write(self, index: int, features: torch.Tensor) -> None:
        if self.folder is None:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self._file(index), lambda path: save_file({"features": features.contiguous()}, path))
