"""Compiled decoding (`--compile`): every target forward after the prompt runs a `torch.compile`d graph.

A step's query tokens are padded to a bucket (1, 2, 4, 8, 16, 32 by default: filler tokens in rows no real token
sees; only the real rows are read) and run on a `methods.static_cache.SlotCache`, whose attention window is a
dynamic dimension: each bucket is one graph, compiled before timing (`CompiledModel.warm_up`). After `seal()` a new
graph is an error (BenchError): a compile inside the timed part would be billed to the generation. The prompt's
forward (any length) runs eagerly on the same cache.

What the graphs do differently from the eager forward, and why they are faster on a CPU (smollm2-135m fp32, one
thread, an AMD EPYC: an autoregressive step 24 ms compiled against 42 ms eager, interleaved):
- Linear layers with at most `small_rows` rows (autoregressive steps, 2-token verifications) run as sum(x * W),
  which inductor fuses into one kernel that streams the weights at about twice MKL's rate (MKL's sgemm reads
  ~15 GB/s with one row, and its GEMM for 2-16 rows costs up to 2.5x its 1-row GEMV). More rows keep MKL.
- Attention is core.attention's fold (query heads that share a KV head folded into the query axis) without its
  per-forward memo of folded masks, which dynamo would guard on (a recompile every step). The compiled calls switch
  the model's attention implementation to it and back (the eager lanes of a run are untouched).
- No per-step guards on the model's modules and parameters (dynamo's cache lookup otherwise costs ~2 ms a step).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode
from transformers import AttentionInterface

from core.errors import BenchError
from methods.decode import Draft
from methods.static_cache import SlotCache, step_layout

BUCKETS = (1, 2, 4, 8, 16, 32)
SMALL_ROWS = 2  # linear layers with at most this many rows run as generated multiply-reduce kernels (CPU)
ATTENTION = "decodebench_compiled"


def compiled_sdpa(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:  # fmt: skip
    """SDPA on the key/value heads with the query heads that share one folded into the query axis (no KV copy)."""
    if any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux")):
        raise BenchError("--compile supports plain softmax attention only (this model's has a bias, softcap or sink)")
    n_rep = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, dim = query.shape
    folded = query.reshape(batch, key.shape[1], n_rep * q_len, dim)
    mask = attention_mask
    if mask is not None and q_len > 1 and n_rep > 1:
        kv = mask.shape[-1]
        mask = mask[:, :, None].expand(batch, 1, n_rep, q_len, kv).reshape(batch, 1, n_rep * q_len, kv)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q_len, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, compiled_sdpa)


class SmallRows(TorchFunctionMode):
    """While tracing: `F.linear` on at most `rows` rows becomes sum(x * W), which inductor fuses into one kernel."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear and args[0].numel() // args[0].shape[-1] <= self.rows:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            out = (x.unsqueeze(-2) * weight).sum(-1)
            return out if bias is None else out + bias
        return func(*args, **kwargs)


class CompiledModel:
    """A model's compiled forward on its own SlotCache: one graph per query bucket, counted and sealed."""

    def __init__(self, model: Any, buckets: tuple[int, ...] = BUCKETS, small_rows: int | None = None,
                 backend: str = "inductor") -> None:  # fmt: skip
        if model.config.is_encoder_decoder:
            raise BenchError("--compile needs a decoder-only model")
        self.model = model
        self.buckets = tuple(sorted(buckets))
        parameter = next(model.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
        self.small_rows = small_rows if small_rows is not None else (SMALL_ROWS if self.device.type == "cpu" else 0)
        self.cache = SlotCache(model)
        self.configs = list({id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values())
        self.graphs = 0  # graphs compiled so far
        self.compile_s = 0.0  # seconds spent in calls that compiled
        self.sealed = False
        # the graphs of this instance apart from other instances' (dynamo caps graphs per code object otherwise);
        # no guards on the model's modules and parameters: checking them costs ~2 ms per smollm2 step
        self._compiled = torch.compile(
            self._forward, fullgraph=True, dynamic=False, backend=backend, isolate_recompiles=True,
            recompile_limit=2 * len(self.buckets),
            options={"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe},
        )  # fmt: skip

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache):
        with SmallRows(self.small_rows):
            return self.model(ids, past_key_values=cache, position_ids=positions, attention_mask=mask).logits

    def bucket(self, tokens: int) -> int:
        """The smallest bucket that holds a step of `tokens` query tokens."""
        for size in self.buckets:
            if size >= tokens:
                return size
        raise BenchError(
            f"a step of {tokens} query tokens exceeds --compile's largest bucket ({self.buckets[-1]}); "
            "use smaller drafts or run without --compile"
        )

    @torch.inference_mode()  # graphs are traced on inference tensors: other tensors would fail their guards
    def step(self, pending: int, cached: int, draft: Draft | None = None) -> torch.Tensor:
        """The compiled forward of the pending token (at position `cached`) and the draft: logits of the real rows."""
        n = len(draft.tokens) if draft is not None else 0
        size = self.bucket(1 + n)
        visible, offsets = (draft.visible, draft.positions) if draft is not None else (None, None)
        positions, write, mask = step_layout(cached, 1, n, size, visible, offsets, self.dtype, self.device)
        tokens = [pending, *(draft.tokens if draft is not None else ()), *[pending] * (size - 1 - n)]
        return self.run(torch.tensor([tokens], device=self.device), positions, write, mask)[0, : 1 + n]

    def run(self, ids: torch.Tensor, positions: torch.Tensor, write: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One compiled forward of a whole bucket; refuses (BenchError) to compile a new graph once sealed."""
        torch._dynamo.mark_dynamic(mask, 3)
        self.cache.prepare(write, mask)
        before, start = counters["stats"]["unique_graphs"], time.perf_counter()
        saved = [config._attn_implementation_internal for config in self.configs]
        for config in self.configs:
            config._attn_implementation_internal = ATTENTION
        try:
            logits = self._compiled(ids, positions, mask, self.cache)
        finally:
            for config, implementation in zip(self.configs, saved, strict=True):
                config._attn_implementation_internal = implementation
        if counters["stats"]["unique_graphs"] != before:
            self._compiled_one(ids.shape[1], mask.shape[-1], time.perf_counter() - start)
        return logits

    def _compiled_one(self, size: int, window: int, seconds: float) -> None:
        if self.sealed:
            raise BenchError(
                f"--compile: torch.compile compiled a new graph in the timed part (a {size}-token step attending "
                f"to {window} positions): a guard failed, so every such step would recompile; rerun with "
                "TORCH_LOGS=recompiles to see which"
            )
        self.graphs += 1
        self.compile_s += seconds

    def warm_up(self, max_step_tokens: int) -> float:
        """Compile the graph of every bucket up to the one holding `max_step_tokens` (each run on two windows, so a
        graph that does not generalise over the window shows here); returns the seconds it took."""
        start = time.perf_counter()
        top = self.bucket(max_step_tokens)
        for size in (b for b in self.buckets if b <= top):
            draft = Draft.chain([0] * (size - 1)) if size > 1 else None
            try:
                self.step(0, size + 3, draft)
            except torch._dynamo.exc.TorchDynamoException as exc:  # a model whose forward dynamo cannot capture
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise BenchError(f"--compile cannot compile this model's forward: {first}") from exc
            graphs = self.graphs
            self.step(0, 2 * size + 17, draft)
            if self.graphs != graphs:
                raise BenchError(f"--compile: the graph of {size}-token steps recompiled for another attention window")
        return time.perf_counter() - start

    def target(self) -> CompiledTarget:
        """The decode engine's Target for one generation on this model."""
        return CompiledTarget(self)

    def seal(self) -> None:
        """From now on (the timed part) a new graph raises a BenchError."""
        self.sealed = True


class CompiledTarget:
    """The decode engine's Target on a CompiledModel: the prompt's forward eagerly, every later one compiled."""

    def __init__(self, compiled: CompiledModel) -> None:
        self.compiled = compiled

    def start(self, prompt_len: int, max_new_tokens: int) -> None:
        self.compiled.cache.reserve(prompt_len + max_new_tokens + self.compiled.buckets[-1])

    def forward(self, inputs: list[int], cached: int, draft: Draft | None) -> tuple[torch.Tensor, None]:
        if len(inputs) == 1:
            return self.compiled.step(inputs[0], cached, draft), None
        c = self.compiled
        n = len(draft.tokens) if draft is not None else 0
        visible, offsets = (draft.visible, draft.positions) if draft is not None else (None, None)
        size = len(inputs) + n
        positions, write, mask = step_layout(cached, len(inputs), n, size, visible, offsets, c.dtype, c.device)
        c.cache.prepare(write, mask)
        ids = torch.tensor([[*inputs, *(draft.tokens if draft is not None else ())]], device=c.device)
        out = c.model(ids, past_key_values=c.cache, position_ids=positions, attention_mask=mask, logits_to_keep=1 + n)
        return out.logits[0], None

    def keep(self, pending: int, n_step: int, accepted: list[int]) -> None:
        self.compiled.cache.keep(pending, n_step, accepted)


def compiled_forward(
    model: Any, max_len: int, buckets: tuple[int, ...] = BUCKETS
) -> Callable[[torch.Tensor, int, int | None], torch.Tensor]:
    """For timing one compiled forward (`bench profile`): returns `forward(ids, cached_len, rows=None)`, which runs
    `ids` (1, q) as a causal chain after `cached_len` positions of the model's SlotCache (room for `max_len`
    positions at first, more when asked: the same graphs; its contents are arbitrary) in the graph of q's bucket, and
    returns the logits (rows, vocab) of the last `rows` real tokens (all q when None). The first call per bucket
    compiles; time the later ones. `forward.compiled` is the CompiledModel (its `graphs` and `compile_s`)."""
    compiled = CompiledModel(model, buckets)
    compiled.cache.reserve(max_len + compiled.buckets[-1])

    @torch.inference_mode()
    def forward(ids: torch.Tensor, cached_len: int, rows: int | None = None) -> torch.Tensor:
        q = ids.shape[1]
        size = compiled.bucket(q)
        compiled.cache.reserve(cached_len + size)
        positions, write, mask = step_layout(cached_len, q, 0, size, dtype=compiled.dtype, device=compiled.device)
        padded = torch.cat([ids, ids[:, -1:].expand(1, size - q)], dim=1).to(compiled.device)
        logits = compiled.run(padded, positions, write, mask)[0, :q]
        return logits if rows is None else logits[q - rows :]

    forward.compiled = compiled  # type: ignore[attr-defined]
    return forward


def profile_forward(model: Any) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """bench.profile's forward factory for `bench profile --compile`: `run(step, cache)` times the compiled forward
    of `step` (1, q) on as many cached positions as the eager `cache` held when `run` first saw it (its contents and
    later crops are ignored: the compiled forward has its own SlotCache). Buckets up to 64 query tokens."""
    forward = compiled_forward(model, 1024, BUCKETS + (64,))
    seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def run(step: torch.Tensor, cache: Any) -> torch.Tensor:
        return forward(step, seen.setdefault(cache, cache.get_seq_length()))

    return run
