"""The KV cache every decode loop uses: transformers' DynamicCache with layers that grow in chunks and roll back.

A stock DynamicLayer appends by `torch.cat`, copying the whole cache at every step; `GrowingLayer` writes new
positions into spare capacity and exposes views, so a step copies only its own tokens. A stock sliding-window
layer keeps only the last window - 1 positions, so a verification step's rejected tokens cannot be cropped once
the window is full; `SlidingLayer` keeps `MARGIN` positions more (attention still sees only the window), so it
can. Rollback is a crop (a shorter view), after moving the accepted draft positions behind the pending token
when they do not follow it (Lookahead: the accepted guess sits after the window).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from core.errors import BenchError
from methods.attention import check_model

MARGIN = 256  # positions a sliding layer keeps beyond its window, for rollback across several updates


class _Buffered:
    """Keys/values as views into buffers with room to grow (doubling): an update copies only its positions."""

    keys: torch.Tensor
    values: torch.Tensor
    _keys_buffer: torch.Tensor | None = None
    _values_buffer: torch.Tensor | None = None
    _retain: int | None = None  # most old positions carried into a new buffer (None: all)

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        valid = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        n = key_states.shape[-2]
        buffer = self._keys_buffer
        if buffer is None or valid + n > buffer.shape[-2] or (valid and self.keys.data_ptr() != buffer.data_ptr()):
            carry = valid if self._retain is None else min(valid, self._retain)
            shape = (*key_states.shape[:-2], max(256, 2 * (carry + n)), key_states.shape[-1])
            keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
            if carry:  # first use, outgrown, or replaced from outside: carry the valid part over
                keys[..., :carry, :] = self.keys[..., valid - carry :, :]
                values[..., :carry, :] = self.values[..., valid - carry :, :]
            self._keys_buffer, self._values_buffer, valid = keys, values, carry
        self._keys_buffer[..., valid : valid + n, :] = key_states
        self._values_buffer[..., valid : valid + n, :] = value_states
        self.keys = self._keys_buffer[..., : valid + n, :]
        self.values = self._values_buffer[..., : valid + n, :]


class GrowingLayer(_Buffered, DynamicLayer):
    """A full-attention DynamicLayer whose keys/values are views into growing buffers."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self._append(key_states, value_states)
        return self.keys, self.values


class SlidingLayer(_Buffered, DynamicSlidingWindowLayer):
    """A sliding-window layer that can roll back: attention gets what the stock layer gives (the last window - 1
    cached positions and the new ones), but `keys`/`values` hold up to `MARGIN` older positions too."""

    def __init__(self, sliding_window: int, **kwargs: Any) -> None:
        super().__init__(sliding_window=sliding_window)
        self._retain = sliding_window - 1 + MARGIN

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        seen = min(self.cumulative_length, self.sliding_window - 1) + key_states.shape[-2]
        self._append(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        return self.keys[..., -seen:, :], self.values[..., -seen:, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, not {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        left, total = self.keys.shape[-2] + tokens_to_remove, self.cumulative_length + tokens_to_remove
        if left < min(total, self.sliding_window - 1):
            raise BenchError(
                f"cannot roll a sliding-window layer back {-tokens_to_remove} positions (at most {MARGIN})"
            )
        self.keys, self.values = self.keys[..., :left, :], self.values[..., :left, :]
        self.cumulative_length = total


def new_cache(model: Any) -> DynamicCache:
    """A DynamicCache for `model` with growing full-attention layers and rollback-capable sliding layers.

    Refuses (BenchError) a model whose attention implementation or layer types the engine cannot run losslessly."""
    check_model(model)
    cache = DynamicCache(config=model.config)
    cache.layers = [
        SlidingLayer(layer.sliding_window) if type(layer) is DynamicSlidingWindowLayer else GrowingLayer()
        for layer in cache.layers
    ]
    return cache


def keep(cache: DynamicCache, cached: int, n_step: int, accepted: list[int]) -> None:
    """After a forward of the pending token and `n_step` draft tokens on top of `cached` positions: keep the
    pending token and the accepted draft positions (indices into the draft), in order, and drop the rest.

    Accepted positions that do not follow the pending token are moved behind it: one slice copy per layer when
    they are one contiguous range (an accepted chain), an index copy otherwise. Each layer's step positions are
    its last 1 + `n_step` (a sliding layer holds fewer than `cached` before them)."""
    m = len(accepted)
    if accepted != list(range(m)):
        first = accepted[0]
        contiguous = accepted == list(range(first, first + m))
        for layer in cache.layers:
            start = layer.keys.shape[-2] - n_step  # the first draft position in this layer's keys
            if contiguous:
                for kv in (layer.keys, layer.values):
                    moved = kv[..., start + first : start + first + m, :]
                    kv[..., start : start + m, :] = moved.clone() if first < m else moved  # clone if they overlap
            else:
                index = torch.tensor([start + i for i in accepted], device=layer.keys.device)
                for kv in (layer.keys, layer.values):
                    kv[..., start : start + m, :] = kv.index_select(-2, index)
    cache.crop(m - n_step)
