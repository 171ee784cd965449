"""The KV cache every decode loop uses: transformers' DynamicCache with layers that grow in chunks.

A stock DynamicLayer appends by `torch.cat`, copying the whole cache at every step; `GrowingLayer` writes new
positions into spare capacity and exposes views, so a step copies only its own tokens. Rollback is a crop (a
shorter view) or, for accepted tokens that are not contiguous (Lookahead), an in-place move of those positions.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into buffers with room to grow (doubling)."""

    _keys_buffer: torch.Tensor | None = None
    _values_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        valid = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        n = key_states.shape[-2]
        buffer = self._keys_buffer
        if buffer is None or valid + n > buffer.shape[-2] or (valid and self.keys.data_ptr() != buffer.data_ptr()):
            shape = (*key_states.shape[:-2], max(256, 2 * (valid + n)), key_states.shape[-1])
            keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
            if valid:  # first use, outgrown, or replaced from outside: carry the valid part over
                keys[..., :valid, :] = self.keys
                values[..., :valid, :] = self.values
            self._keys_buffer, self._values_buffer = keys, values
        self._keys_buffer[..., valid : valid + n, :] = key_states
        self._values_buffer[..., valid : valid + n, :] = value_states
        self.keys = self._keys_buffer[..., : valid + n, :]
        self.values = self._values_buffer[..., : valid + n, :]
        return self.keys, self.values


def new_cache(model: Any) -> DynamicCache:
    """A DynamicCache for `model` whose full-attention layers grow in chunks (sliding layers stay as they are)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def keep(cache: DynamicCache, cached: int, n_step: int, accepted: list[int]) -> None:
    """After a forward of the pending token and `n_step` draft tokens on top of `cached` positions: keep the
    pending token and the accepted draft positions (indices into the draft), in order, and drop the rest."""
    if accepted != list(range(len(accepted))):
        source = [cached + 1 + i for i in accepted]
        target = slice(cached + 1, cached + 1 + len(accepted))
        for layer in cache.layers:
            index = torch.tensor(source, device=layer.keys.device)
            layer.keys[..., target, :] = layer.keys.index_select(-2, index)
            layer.values[..., target, :] = layer.values.index_select(-2, index)
    cache.crop(len(accepted) - n_step)
