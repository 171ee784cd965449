"""What the decode engine asks of a model's attention, and the masks of drafts with their own positions.

The engine runs a model only if every attention implementation and cache layer type it uses keeps drafting
lossless: eager, stock sdpa or `decodebench_sdpa` (core.attention), on full-attention and sliding-window layers.

A draft with custom positions/visibility (Lookahead) passes its own 4D mask, which transformers hands as is to
every layer. So the mask is additive float (0 visible, the dtype's minimum hidden: a boolean mask would be ADDED
by eager attention and mask nothing), and built per layer type: a sliding layer's keys are only the last
window - 1 cached positions plus the step's tokens, and a query at position p sees keys at positions > p - window,
as transformers' sliding mask does. Models mixing layer types (Gemma 3) take a {layer type: mask} dict.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import get_layer_types_and_kwargs

from core.attention import NAME
from core.errors import BenchError

IMPLEMENTATIONS = ("eager", "sdpa", NAME)
LAYER_TYPES = ("full_attention", "sliding_attention")


def layer_types(model: Any) -> list[str]:
    """The attention type of each decoder layer, as the model's cache and masks see it."""
    return get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))[0]


def check_model(model: Any) -> None:
    """Refuse, before decoding, a model whose attention the engine cannot verify drafts on losslessly."""
    impl = model.config._attn_implementation
    if impl not in IMPLEMENTATIONS:
        raise BenchError(
            f"attention implementation {impl!r} is not supported by the decode engine (its draft masks need one of "
            f"{', '.join(IMPLEMENTATIONS)}); load the model with one of those"
        )
    other = sorted(set(layer_types(model)) - set(LAYER_TYPES))
    if other:
        raise BenchError(
            f"the decode engine rolls back full and sliding-window attention layers only; this model has "
            f"{', '.join(other)} layers"
        )


def _allowed(visible: torch.Tensor, positions: torch.Tensor, cached: int, past: int, window: int | None):
    """Which keys each query sees: the last `past` cached positions, then the step's tokens by `visible`."""
    q = len(positions)
    allowed = torch.ones(q, past + q, dtype=torch.bool, device=visible.device)
    allowed[:, past:] = visible
    if window is not None:
        keys = torch.cat([torch.arange(cached - past, cached, device=positions.device), positions])
        allowed &= keys[None, :] > positions[:, None] - window
    return allowed


def step_mask(
    visible: torch.Tensor, positions: torch.Tensor, cached: int, model: Any = None, cache: Any = None
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive attention mask(s) for a step of q tokens at `positions` on top of `cached` positions.

    `visible[i, j]`: step token i attends to step token j. Without a model and cache: one full-attention mask
    in float32. Otherwise one (1, 1, q, kv) mask in the model's dtype per layer type, sized like the cache layer.
    """
    dtype = model.dtype if model is not None else torch.float32
    q = len(positions)
    if model is None or cache is None:
        specs = {"full_attention": (cached, None)}
    else:
        specs = {}
        for i, kind in enumerate(layer_types(model)):
            if kind not in specs:
                layer = cache.layers[i]
                window = layer.sliding_window if getattr(layer, "is_sliding", False) else None
                specs[kind] = (cache.get_mask_sizes(q, i)[0] - q, window)
    masks = {}
    for kind, (past, window) in specs.items():
        allowed = _allowed(visible, positions, cached, past, window)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        masks[kind] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]
    return masks if len(masks) > 1 else next(iter(masks.values()))
