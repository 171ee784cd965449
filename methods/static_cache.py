"""The KV cache of compiled decoding: preallocated buffers, a write index and an attention window per forward.

Every layer keeps its keys/values in buffers of `capacity` slots, allocated once and reused by every generation.
A forward writes its q tokens at the slots `write` (after the cached ones, in step order) and attends over the
first `window` slots, the width of its 4D mask: a compiled graph sees the same shapes at every step except the
window, which is a dynamic dimension (so one graph per query bucket, and attention over the used slots only, not
over the whole buffer). Which slots are valid is the engine's business (its token counts): a rejected draft's slots
are overwritten by later steps, and accepted draft tokens that do not follow the pending token (Lookahead) are moved
behind it by an index copy (`keep`). Full-attention layers only: sliding-window models are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from core.errors import BenchError
from methods.attention import layer_types


class Slots:
    """What the next forward writes and reads, shared by the layers of one cache."""

    def __init__(self) -> None:
        self.write = torch.zeros(0, dtype=torch.long)  # the slot of each step token
        self.mask: torch.Tensor | None = None  # (1, 1, q, window) additive mask; its width is the window


class SlotLayer(CacheLayerMixin):
    """One layer's key/value buffers; `update` writes the step's slots and returns the window's keys/values."""

    is_compileable = True
    is_croppable = False
    is_sliding = False

    def __init__(self, slots: Slots) -> None:
        super().__init__()
        self.slots = slots

    @torch.inference_mode()  # like every tensor a compiled graph sees (their guards check it)
    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        for buffer in (self.keys, self.values):  # a larger buffer later is the same graph
            torch._dynamo.mark_dynamic(buffer, 2)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise BenchError("the static KV cache has no buffers: call SlotCache.reserve() before a forward")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.keys.index_copy_(2, self.slots.write, key_states)
        self.values.index_copy_(2, self.slots.write, value_states)
        window = self.slots.mask.shape[-1]
        return self.keys[:, :, :window], self.values[:, :, :window]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.slots.mask.shape[-1], 0

    def get_seq_length(self) -> int:
        return 0  # positions come from the engine, never from the cache

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class SlotCache(Cache):
    """A static KV cache of `SlotLayer`s for one model (one generation at a time)."""

    def __init__(self, model: Any, capacity: int = 256) -> None:
        kinds = layer_types(model)
        if any(kind != "full_attention" for kind in kinds):
            raise BenchError(
                "--compile supports full-attention models only; this model has "
                f"{', '.join(sorted(set(kinds) - {'full_attention'}))} layers (run it without --compile)"
            )
        self.slots = Slots()
        super().__init__(layers=[SlotLayer(self.slots) for _ in kinds])
        cfg = model.config.get_text_config(decoder=True)
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        parameter = next(model.parameters())
        self.shape = (1, heads, 0, head_dim)
        self.dtype, self.device = parameter.dtype, parameter.device
        self.reserve(capacity)

    @property
    def capacity(self) -> int:
        return self.shape[2]

    def reserve(self, slots: int) -> None:
        """Room for at least `slots` positions: new buffers (a power of two, at least 256) when they lack it."""
        if slots <= self.capacity:
            return
        self.shape = (*self.shape[:2], max(256, 1 << (slots - 1).bit_length()), self.shape[3])
        for layer in self.layers:
            layer.allocate(self.shape, self.dtype, self.device)

    def prepare(self, write: torch.Tensor, mask: torch.Tensor) -> None:
        """The next forward writes its tokens at slots `write` and attends with `mask` (its width: the window)."""
        if mask.shape[-1] > self.capacity:  # the window ends after the step's last slot
            raise BenchError(f"the static KV cache holds {self.capacity} positions; a step needs {mask.shape[-1]}")
        self.slots.write, self.slots.mask = write, mask

    def keep(self, pending: int, n_step: int, accepted: list[int]) -> None:
        """After a step whose pending token sits at slot `pending` with `n_step` draft tokens after it: move the
        accepted draft tokens (indices into the draft) right behind the pending one, when they are not there."""
        m = len(accepted)
        if accepted == list(range(m)):
            return
        source = torch.tensor([pending + 1 + i for i in accepted], device=self.device)
        for layer in self.layers:
            for buffer in (layer.keys, layer.values):
                buffer[:, :, pending + 1 : pending + 1 + m] = buffer.index_select(2, source)


def step_layout(
    cached: int, chain: int, n: int, size: int, visible: torch.Tensor | None = None, offsets: list[int] | None = None,
    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Position ids (1, size), write slots (size,) and the additive mask (1, 1, size, cached + size) of a forward on
    top of `cached` slots: `chain` tokens in a causal chain (uncached prompt tokens, the pending token last), then
    `n` draft tokens (`visible[i, j]`: draft token i sees draft token j, default causal; `offsets`: their positions
    after the pending token, default 1..n), then filler rows up to `size` (a bucket): causal, seen by no real row."""
    if size == 1:  # an autoregressive step: the fast path
        mask = torch.zeros(1, 1, 1, cached + 1, dtype=dtype, device=device)
        return torch.tensor([[cached]], device=device), torch.tensor([cached], device=device), mask
    real = chain + n
    steps = torch.arange(size)
    positions = cached + steps
    if offsets is not None:
        positions[chain:real] = cached + chain - 1 + torch.tensor(offsets, dtype=torch.long)
    allowed = torch.ones(size, size, dtype=torch.bool).tril()
    if visible is not None:
        allowed[chain:real, chain:real] = visible.to(torch.bool)
    mask = torch.zeros(size, cached + size, dtype=dtype)
    mask[:, cached:].masked_fill_(~allowed, torch.finfo(dtype).min)
    return positions[None].to(device), (cached + steps).to(device), mask[None, None].to(device)
