"""The attention implementation every loaded model runs: `decodebench_sdpa`.

transformers' stock `sdpa` treats grouped-query attention (fewer key/value heads than query heads) two ways: a
single query token (an autoregressive step) runs on the key/value heads as they are, but several query tokens
with a mask (a verification step: the pending token plus draft tokens) first copy the whole KV cache n_rep times
in every layer (`repeat_kv`). Every drafting method paid that copy and the baseline did not.

`decodebench_sdpa` runs both on the same path and never copies the cache: the query heads that share a key/value
head are folded into the query axis, (batch, heads, q, dim) -> (batch, kv_heads, n_rep * q, dim), the mask rows
repeated to match (once per forward, not per layer), and SDPA runs on the key/value heads. On CPU this costs what
SDPA's own `enable_gqa` does; unlike `enable_gqa` it asks nothing of the kernel, so it also keeps a masked or fp32
call on CUDA's memory-efficient kernel (there `enable_gqa` is the flash kernel's, which takes no mask and no fp32,
and otherwise, before torch added it to the memory-efficient kernel, falls back to the math kernel). A maskless
multi-token call (a prefill) stays on the stock path (`enable_gqa`, causal).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "decodebench_sdpa"
ENV = "DECODEBENCH_ATTENTION"  # "sdpa": keep transformers' stock path

_FOLDED: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # recent (mask, n_rep, folded mask), newest last


def _fold_mask(mask: torch.Tensor | None, n_rep: int, q_len: int) -> torch.Tensor | None:
    """A (batch, 1, q, kv) mask for the folded queries (row g * q + i is row i). Kept for the next layers: every
    layer of a forward gets the same mask object (one per layer type in a hybrid model)."""
    if mask is None or q_len == 1:
        return mask  # one row broadcasts over the folded query axis
    for seen, rep, folded in _FOLDED:
        if seen is mask and rep == n_rep:  # holding `seen` keeps its identity unique while it is kept
            return folded
    batch, _, _, kv = mask.shape
    folded = mask[:, :, None].expand(batch, 1, n_rep, q_len, kv).reshape(batch, 1, n_rep * q_len, kv)
    _FOLDED[:] = [*_FOLDED[-3:], (mask, n_rep, folded)]
    return folded


def sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for one layer: (batch, heads, q, dim) queries on (batch, kv_heads, kv, dim) keys/values."""
    n_rep = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, _ = query.shape
    stock = (
        n_rep == 1
        or (attention_mask is None and q_len > 1)  # causal without a mask: the stock path already uses enable_gqa
        or (attention_mask is not None and attention_mask.shape[1] != 1)  # a per-head mask cannot be folded
        or any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux"))
        or kwargs.get("output_attentions", False)
    )
    if stock:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    folded = query.reshape(batch, key.shape[1], n_rep * q_len, query.shape[-1])
    mask = _fold_mask(attention_mask, n_rep, q_len)
    out = torch.nn.functional.scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(batch, heads, q_len, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)  # masks as for sdpa (boolean, skipped where is_causal does)


def use_ours(model: Any) -> str:
    """Switch a model that runs stock `sdpa` to `decodebench_sdpa`; return the implementation it now runs.

    Models on another implementation (eager where SDPA is unsupported, or one chosen on purpose) keep it, and so do
    all models when `$DECODEBENCH_ATTENTION` is `sdpa` (transformers' stock path, to measure what ours changes)."""
    config = model.config
    stock = os.environ.get(ENV, NAME) == "sdpa"
    if config._attn_implementation == "sdpa" and not stock and model._can_set_attn_implementation():
        model.set_attn_implementation(NAME)
    return model.config._attn_implementation
