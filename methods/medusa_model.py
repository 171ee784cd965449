"""Medusa heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding
Heads"): the module, its initialisation and training loss, and the files in FasterDecoding/Medusa's hub layout.

Layout (medusa/model/medusa_model.py): `medusa_head` is a ModuleList of K heads; head k is
`Sequential(ResBlock x medusa_num_layers, Linear(hidden, vocab, bias=False))`, a ResBlock is `x + SiLU(Linear(x))`.
Its state dict (keys `{k}.{l}.linear.weight`, `{k}.{l}.linear.bias`, `{k}.{L}.weight`) is the file
`medusa_lm_head.pt` (the published heads) or `medusa_lm_head.safetensors` (the reference's newer trainer), beside a
config.json with `medusa_num_heads`, `medusa_num_layers` and `base_model_name_or_path`. The reference repeats ONE
ResBlock instance medusa_num_layers times (`[ResBlock(h)] * n`: shared weights); the published heads have one
layer, where that makes no difference; here each layer is its own block (the same keys).

Initialisation (the reference's legacy trainer): the ResBlock's linear weight is zero (its bias keeps PyTorch's
default init), the vocab linear is a copy of the target's LM head. Loss (train_legacy.py `compute_loss`): head k
at position t is trained with cross-entropy against token t + k + 2 where that token is an answer token, the mean
over those positions, summed over the heads unweighted (the paper's lambda_k = 0.8^k is not in the code).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import BenchError
from core.files import atomic_write, file_sha256
from core.models import LoadedModel

PT_FILE = "medusa_lm_head.pt"
SAFETENSORS_FILE = "medusa_lm_head.safetensors"
CONFIG_FILE = "config.json"
_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


class ResBlock(nn.Module):
    """x + SiLU(Linear(x)), the linear's weight zero at creation (an identity map), as the reference's."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    """K Medusa heads on the target's last hidden state; head k predicts the token k + 2 positions ahead."""

    def __init__(self, num_heads: int, num_layers: int, hidden_size: int, vocab_size: int,
                 base_model: str = "") -> None:  # fmt: skip
        super().__init__()
        self.num_heads, self.num_layers = num_heads, num_layers
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.base_model_name_or_path = base_model
        self.source: dict[str, Any] = {}  # where load_heads read the heads from (the run's manifest)
        self.medusa_head = nn.ModuleList(
            nn.Sequential(
                *[ResBlock(hidden_size) for _ in range(num_layers)], nn.Linear(hidden_size, vocab_size, bias=False)
            )
            for _ in range(num_heads)
        )

    def forward(self, hidden: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """Logits (..., count, vocab) of the first `count` heads (all by default) on hidden states (..., hidden)."""
        heads = self.medusa_head[: self.num_heads if count is None else count]
        hidden = hidden.to(self.medusa_head[0][-1].weight.dtype)
        return torch.stack([head(hidden) for head in heads], dim=-2)


def _target_shape(target: LoadedModel) -> tuple[int, int]:
    """(hidden size, vocab size) of the target's LM head."""
    weight = target.model.get_output_embeddings().weight
    return int(weight.shape[1]), int(weight.shape[0])


def _base_name(target: LoadedModel) -> str:
    return str(target.artifact.get("hub_id") or target.artifact.get("spec") or "")


def new_heads(target: LoadedModel, medusa_num_heads: int = 5, medusa_num_layers: int = 1) -> MedusaHeads:
    """Fresh heads for `target`, initialised as the reference (zero ResBlock weights, the LM head copied), on the
    target's device and in its LM head's dtype. Defaults: the reference's MedusaConfig (5 heads, 1 layer)."""
    if medusa_num_heads < 1 or medusa_num_layers < 0:
        raise BenchError("Medusa heads need medusa_num_heads >= 1 and medusa_num_layers >= 0")
    hidden, vocab = _target_shape(target)
    lm_head = target.model.get_output_embeddings().weight
    heads = MedusaHeads(medusa_num_heads, medusa_num_layers, hidden, vocab, _base_name(target))
    with torch.no_grad():
        for head in heads.medusa_head:
            head[-1].weight.copy_(lm_head.detach().float())
    return heads.to(device=lm_head.device, dtype=lm_head.dtype)


def medusa_loss(module: MedusaHeads, target: LoadedModel, hidden: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The reference's loss on cached features: head k at position t against token t + k + 2, where that token is
    an answer token (`mask[b, t + k + 1]`); cross-entropy means summed over the heads. Metrics per head: the loss
    and top-1 accuracy (the reference's `medusa{k}_loss`, `medusa{k}_top1`)."""
    total = hidden.new_zeros((), dtype=torch.float32)
    metrics: dict[str, float] = {}
    length = tokens.shape[1]
    for k, head in enumerate(module.medusa_head):
        shift = k + 2
        if length <= shift:
            break
        valid = mask[:, shift - 1 : length - 1]
        if not bool(valid.any()):
            continue
        logits = head(hidden[:, : length - shift][valid].to(head[-1].weight.dtype)).float()
        labels = tokens[:, shift:][valid]
        loss = nn.functional.cross_entropy(logits, labels)
        total = total + loss
        metrics[f"medusa{k}_loss"] = float(loss.detach())
        metrics[f"medusa{k}_top1"] = float((logits.argmax(-1) == labels).float().mean())
    metrics["loss"] = float(total.detach())
    return total, metrics


def save_heads(module: MedusaHeads, folder: Path, meta: dict[str, Any]) -> None:
    """`medusa_lm_head.pt` (the state dict of `medusa_head`, the published heads' file) and config.json (the
    reference's fields, the shapes, and our `meta` under "decodebench") in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in module.medusa_head.state_dict().items()}
    atomic_write(folder / PT_FILE, lambda path: torch.save(state, path))
    config = {
        "medusa_num_heads": module.num_heads,
        "medusa_num_layers": module.num_layers,
        "base_model_name_or_path": module.base_model_name_or_path,
        "hidden_size": module.hidden_size,
        "vocab_size": module.vocab_size,
        "decodebench": meta,
    }
    atomic_write(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def heads_folder(source: str) -> Path:
    """A local folder, or a hub id downloaded with huggingface_hub (one BenchError line when that fails)."""
    if Path(source).is_dir():
        return Path(source)
    if "/" not in source or source.startswith((".", "/")) or Path(source).exists():
        raise BenchError(f"Medusa heads {source!r}: no such folder (nor a hub id)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=[CONFIG_FILE, "medusa_lm_head.*"]))
    except Exception as exc:  # offline, unknown repository, network errors ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchError(f"could not download Medusa heads {source!r}: {first}") from exc


def _read_state(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The heads' state dict: medusa_lm_head.safetensors, else medusa_lm_head.pt (weights only)."""
    try:
        if (folder / SAFETENSORS_FILE).exists():
            from safetensors.torch import load_file

            return load_file(folder / SAFETENSORS_FILE), folder / SAFETENSORS_FILE
        if (folder / PT_FILE).exists():
            return torch.load(folder / PT_FILE, map_location="cpu", weights_only=True), folder / PT_FILE
    except Exception as exc:
        raise BenchError(f"Medusa heads in {folder}: unreadable weights ({type(exc).__name__}: {exc})") from exc
    raise BenchError(f"Medusa heads in {folder}: no {PT_FILE} or {SAFETENSORS_FILE}")


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise BenchError(f"Medusa heads in {folder}: no {CONFIG_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise BenchError(f"Medusa heads in {folder}: {CONFIG_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise BenchError(f"Medusa heads in {folder}: {CONFIG_FILE} is not a JSON object")
    return config


def _layout(state: dict[str, torch.Tensor], folder: Path) -> tuple[int, int, int, int]:
    """(heads, layers, hidden, vocab) read off the state dict's reference key names; malformed keys are refused.
    The number of heads comes from the weights: the reference notes that published configs can under-count it."""
    found = [_KEY.match(key) for key in state]
    if not state or not all(found):
        odd = next((key for key, m in zip(state, found, strict=True) if not m), "(empty)")
        raise BenchError(f"Medusa heads in {folder}: unexpected key {odd!r} (expected the reference's names)")
    heads = 1 + max(int(m.group(1)) for m in found if m)
    layers = max(int(m.group(2)) for m in found if m and m.group(3) == "weight")
    vocab, hidden = state[f"0.{layers}.weight"].shape
    return heads, layers, int(hidden), int(vocab)


def load_heads(source: str, target: LoadedModel, dtype: torch.dtype | None = None) -> MedusaHeads:
    """Heads from a folder or hub id in the reference's layout, checked against `target` (hidden size, vocab,
    and the target sha256 our training recorded); on the target's device and in its LM head's dtype (or
    `dtype`)."""
    folder = heads_folder(source)
    config, (state, weights) = _read_config(folder), _read_state(folder)
    heads, layers, hidden, vocab = _layout(state, folder)
    if config.get("medusa_num_layers", layers) != layers:
        raise BenchError(f"Medusa heads in {folder}: config says {config['medusa_num_layers']} layers, "
                         f"the weights hold {layers}")  # fmt: skip
    want_hidden, want_vocab = _target_shape(target)
    if (hidden, vocab) != (want_hidden, want_vocab):
        raise BenchError(f"Medusa heads in {folder} are for hidden size {hidden} and vocab {vocab}; "
                         f"the target has {want_hidden} and {want_vocab}")  # fmt: skip
    recorded = ((config.get("decodebench") or {}).get("target") or {}).get("sha256")
    actual = target.artifact.get("sha256")
    if recorded and actual and recorded != actual:
        raise BenchError(f"Medusa heads in {folder} were trained for a target with sha256 {recorded[:12]}..., "
                         f"not this one ({actual[:12]}...)")  # fmt: skip
    module = MedusaHeads(heads, layers, hidden, vocab, str(config.get("base_model_name_or_path", "")))
    try:
        module.medusa_head.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BenchError(f"Medusa heads in {folder}: weights do not fit the layout ({first})") from exc
    module.source = {"source": source, "file": weights.name, "sha256": file_sha256(weights),
                     "medusa_num_heads": heads, "medusa_num_layers": layers}  # fmt: skip
    lm_head = target.model.get_output_embeddings().weight
    return module.to(device=lm_head.device, dtype=dtype or lm_head.dtype).eval()
