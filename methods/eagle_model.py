"""EAGLE's draft layer (Li et al. 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty"):
build, train loss, save and load in SafeAILab/EAGLE's layout.

As the reference's `Model` (eagle/model/cnets.py at the EAGLE-2 commit 79d6f79, the EAGLE-1/2 code path; cnets1.py
today): `fc` maps concat(embedding(token_{t+1}), feature_t) to the hidden size (with a bias), then Llama decoder
layers with the target's attention geometry (heads, kv heads, rope theta), the first without its input_layernorm;
no final norm: the target's LM head reads the output directly. The target's embedding and LM head are frozen and
stay the target's (the reference's `embed_tokens.weight` is a frozen copy of the target's: saved for the reference's
loader, checked for shape when loading, not kept). Layers are built from transformers' Llama blocks, so the state
dict keys are the reference's: `fc.weight`, `fc.bias`, `layers.0.self_attn.q_proj.weight`, ...

Training (eagle/train/main.py): the pair (feature_t, token_{t+1}) predicts feature_{t+1}; loss = 1.0 x smooth L1
on the features + 0.1 x cross-entropy against softmax(LM head(feature_{t+1})), input features with the reference's
uniform noise (std 0.2, width scaled by 512 / sequence length) while the layer is in training mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from core.errors import BenchError
from core.models import LoadedModel

WEIGHTS = ("pytorch_model.bin", "model.safetensors")  # the reference's loader reads either
EMBED = "embed_tokens.weight"
V_WEIGHT, P_WEIGHT, NOISE_STD = 1.0, 0.1, 0.2  # train_config v_w, p_w, std ("noise": "uniform")


class EagleLayer(nn.Module):
    """The draft network: fc over concat(embedding, feature), then the decoder layer(s); returns draft features."""

    def __init__(self, config: LlamaConfig, bias: bool = True) -> None:
        super().__init__()
        config._attn_implementation = "sdpa"
        self.config = config
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=bias)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.layers[0].input_layernorm = nn.Identity()  # the reference's layer index 0 has none
        self.rotary_emb = LlamaRotaryEmbedding(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                cache: Any = None) -> torch.Tensor:  # fmt: skip
        """Draft features (B, T, H) of the pairs (features[b, t], embeds[b, t]) at `positions` (B, T), with an
        additive attention `mask` over [cached keys, these]."""
        x = self.fc(torch.cat([embeds.to(self.dtype), features.to(self.dtype)], -1))
        rope = self.rotary_emb(x, positions)
        for layer in self.layers:
            x = layer(x, attention_mask=mask, position_ids=positions, cache=cache, use_cache=cache is not None,
                      position_embeddings=rope)  # fmt: skip
        return x


def causal_mask(cached: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The additive mask (1, 1, n, cached + n) of n new positions after `cached` ones, each seeing its past."""
    hidden = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)
    hidden = torch.cat([torch.zeros(n, cached, dtype=torch.bool, device=device), hidden], 1)
    mask = torch.zeros(hidden.shape, dtype=dtype, device=device)
    return mask.masked_fill_(hidden, torch.finfo(dtype).min)[None, None]


def _target_sizes(target: LoadedModel) -> tuple[int, int]:
    """(hidden size, vocabulary) of the target's LM head."""
    vocab, hidden = target.model.get_output_embeddings().weight.shape
    return hidden, vocab


def layer_config(target: LoadedModel) -> LlamaConfig:
    """A one-layer Llama config with the target's geometry (what the reference's config.json holds)."""
    t = target.model.config.get_text_config(decoder=True)
    hidden, vocab = _target_sizes(target)
    heads = t.num_attention_heads
    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=t.intermediate_size, num_hidden_layers=1,
        num_attention_heads=heads, num_key_value_heads=getattr(t, "num_key_value_heads", None) or heads,
        head_dim=getattr(t, "head_dim", None) or hidden // heads, hidden_act=getattr(t, "hidden_act", "silu"),
        max_position_embeddings=t.max_position_embeddings, rms_norm_eps=getattr(t, "rms_norm_eps", 1e-6),
        rope_parameters=getattr(t, "rope_parameters", None), tie_word_embeddings=False,
    )  # fmt: skip


def _place(layer: EagleLayer, target: LoadedModel, dtype: torch.dtype | None = None) -> EagleLayer:
    """On the target's device and dtype (as the reference's `ea_layer.to(base_model.dtype)`; `dtype` overrides
    it), holding a plain (unregistered) view of the target's embedding for `save_layer`."""
    layer = layer.to(device=target.device, dtype=dtype or next(target.model.parameters()).dtype)
    layer.target_embedding = target.model.get_input_embeddings().weight.detach()
    return layer


def new_layer(target: LoadedModel, bias: bool = True) -> EagleLayer:
    """A fresh draft layer for `target`, initialised as the reference's (PyTorch's default Linear init)."""
    return _place(EagleLayer(layer_config(target), bias), target)


def eagle_loss(module: EagleLayer, target: LoadedModel, hidden: torch.Tensor, tokens: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The reference's loss on cached target features: pair t = (hidden[:, t], tokens[:, t + 1]) predicts
    hidden[:, t + 1]; it counts where mask[:, t + 1] (the predicted feature's next token is an answer token).
    Under autocast (mixed-precision training) the target's head and embeddings stay in their own dtype."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else module.dtype
    head = target.model.get_output_embeddings().weight.detach().to(dtype)
    with torch.no_grad():
        embeds = target.model.get_input_embeddings()(tokens[:, 1:].to(target.device)).to(dtype)
    features, wanted = hidden[:, :-1].to(module.dtype), hidden[:, 1:].to(module.dtype)
    if module.training:  # AddUniformNoise: (U - 0.5) * std * 512 / length, length = the unpadded sequence
        last = torch.where(mask, torch.arange(mask.shape[1], device=mask.device), -1).amax(1)
        length = (last + 2).clamp(1, mask.shape[1]).to(features)
        features = features + (torch.rand_like(features) - 0.5) * NOISE_STD * 512 / length[:, None, None]
    n = features.shape[1]
    positions = torch.arange(n, device=features.device).expand(features.shape[0], n)
    predicted = module(features, embeds, positions, causal_mask(0, n, module.dtype, features.device))
    weight = mask[:, 1:].to(predicted)[..., None]
    count = weight.sum() + 1e-5
    with torch.no_grad():
        target_logits = nn.functional.linear(wanted, head).float()
        target_p = target_logits.softmax(-1)
    logits = nn.functional.linear(predicted, head).float()
    ploss = -(weight * target_p * logits.log_softmax(-1)).sum() / count
    vloss = (weight * nn.functional.smooth_l1_loss(predicted.float(), wanted.float(), reduction="none")).mean(2).sum()
    vloss = vloss / count
    loss = V_WEIGHT * vloss + P_WEIGHT * ploss
    with torch.no_grad():
        where = mask[:, 1:]
        top3 = logits[where].topk(min(3, logits.shape[-1]), -1).indices
        truth = target_logits[where].argmax(-1)
        total = max(int(where.sum()), 1)
        top1 = float((top3[:, 0] == truth).sum()) / total
        top3_acc = float((top3 == truth[:, None]).any(-1).sum()) / total
    return loss, {"loss": loss.item(), "vloss": vloss.item(), "ploss": ploss.item(), "acc": top1, "top3": top3_acc}


def save_layer(module: EagleLayer, folder: Path, meta: dict[str, Any]) -> None:
    """The reference's hub layout: `model.safetensors` (the layer's keys and the target's frozen
    `embed_tokens.weight`) and a Llama-style config.json (+ "bias", "rope_theta", our `meta` under "decodebench")."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    embedding = getattr(module, "target_embedding", None)
    if embedding is not None:
        state[EMBED] = embedding.to("cpu", module.dtype).contiguous()
    save_file(state, str(folder / "model.safetensors"))
    config = module.config.to_dict()
    config.pop("_attn_implementation_internal", None)
    theta = (config.get("rope_parameters") or {}).get("rope_theta")
    config.update({"bias": module.fc.bias is not None, "decodebench": meta}, **({"rope_theta": theta} if theta else {}))
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def drafter_folder(source: str) -> Path:
    """A local folder, or a hub id downloaded with huggingface_hub (refusals are one line)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise BenchError(f"--draft-heads {source}: no such folder (and not a hub id owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["config.json", *WEIGHTS]))
    except Exception as error:  # offline, unknown repository, ...: one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BenchError(f"--draft-heads {source}: cannot download from the Hugging Face hub ({reason})") from None


def _read_state(folder: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        if (folder / WEIGHTS[0]).exists():
            return torch.load(folder / WEIGHTS[0], map_location="cpu", weights_only=True)
        if (folder / WEIGHTS[1]).exists():
            from safetensors.torch import load_file

            return load_file(str(folder / WEIGHTS[1]))
    except Exception as error:
        raise BenchError(f"--draft-heads {source}: cannot read the weights ({type(error).__name__})") from None
    raise BenchError(f"--draft-heads {source}: no {' or '.join(WEIGHTS)} (SafeAILab/EAGLE's layout)")


def load_layer(source: str, target: LoadedModel, dtype: torch.dtype | None = None) -> EagleLayer:
    """The draft layer in `source` (a folder or hub id in the reference's layout) for `target`, in the target's
    dtype unless `dtype` is given; anything that does not fit the target is one BenchError line."""
    folder = drafter_folder(source)
    try:
        raw = json.loads((folder / "config.json").read_text())
        raw = raw if isinstance(raw, dict) else None
    except (OSError, ValueError):
        raw = None
    if raw is None:
        raise BenchError(f"--draft-heads {source}: missing or malformed config.json")
    ours = raw.pop("decodebench", None) or {}
    recorded, sha = (ours.get("target") or {}).get("sha256"), target.artifact.get("sha256")
    if recorded and sha and recorded != sha:
        raise BenchError(f"--draft-heads {source} was trained on another target (sha256 {recorded[:12]}, this "
                         f"target {sha[:12]})")  # fmt: skip
    hidden, vocab = _target_sizes(target)
    got = (raw.get("hidden_size"), raw.get("vocab_size"))
    if got != (hidden, vocab):
        raise BenchError(f"--draft-heads {source}: a layer for hidden size {got[0]} and vocabulary {got[1]}; the "
                         f"target has {hidden} and {vocab}")  # fmt: skip
    bias = bool(raw.pop("bias", True))
    try:
        layer = EagleLayer(LlamaConfig.from_dict(raw), bias)
    except Exception as error:
        raise BenchError(f"--draft-heads {source}: config.json does not describe a Llama layer ({error})") from None
    state = _read_state(folder, source)
    embed = state.pop(EMBED, None)
    if embed is not None and tuple(embed.shape) != (vocab, hidden):
        raise BenchError(
            f"--draft-heads {source}: embed_tokens is {tuple(embed.shape)}, the target's {(vocab, hidden)}"
        )
    expected = layer.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or extra or wrong:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in
                           (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys)  # fmt: skip
        raise BenchError(f"--draft-heads {source}: not SafeAILab/EAGLE's draft layer ({detail})")
    layer.load_state_dict(state)
    return _place(layer, target, dtype).eval()
