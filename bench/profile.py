"""`bench profile`: the target's forward cost c(q, L) for q query tokens on L cached tokens, per kernel backend.

One forward is what the decode engine runs at every step: q = 1 is an autoregressive step, q > 1 a verification
step (the pending token and q - 1 draft tokens, a causal chain, the LM head on every row). Each cell is the median
of `repeats` forwards after a warm-up, timed with the same timer as runs (CUDA events on a GPU). A profile is
stored per (model, dtype, device, compile, threads) under the cache folder, one row per kernel backend, where
`bench report` and `--budget auto` find it; `--out` writes a copy (profile.csv, profile.json, profile.png).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from core import kernels
from core.costmodel import ProfileKey
from core.errors import BenchError
from core.timing import Timer
from methods.kvcache import new_cache

# Random-weight shapes (Llama architecture): profiles of setups whose weights are not here (the papers' Vicuna-7B).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, tie_word_embeddings=True),
    "vicuna-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
}  # fmt: skip
QUERIES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)
CONTEXTS = (200, 1000)
ForwardFactory = Callable[[Any], Callable[[torch.Tensor, Any], Any]]


def random_model(shape: str, dtype: torch.dtype, device: torch.device) -> Any:
    """A randomly initialised Llama model with one of `SHAPES` (no download; the weights do not matter)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise BenchError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def _eager(model: Any) -> Callable[[torch.Tensor, Any], Any]:
    """The engine's forward: the step's tokens on the cache, the LM head on every row."""
    return lambda step, cache: model(step, past_key_values=cache, logits_to_keep=step.shape[1]).logits


@torch.inference_mode()
def measure(model: Any, contexts: list[int], queries: list[int], repeats: int,
            forward: ForwardFactory = _eager) -> list[dict[str, Any]]:  # fmt: skip
    """Median milliseconds of one forward of q tokens on L cached tokens, for every (L, q); the q positions are
    cropped after each forward, so every repeat sees the same cache."""
    device = next(model.parameters()).device
    run = forward(model)
    timer = Timer(device)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    rows = []
    for context in contexts:
        cache = new_cache(model)
        model(torch.randint(vocab, (1, context), generator=gen).to(device), past_key_values=cache, logits_to_keep=1)
        for q in queries:
            step = torch.randint(vocab, (1, q), generator=gen).to(device)
            times = []
            for i in range(repeats + 2):  # two warm-up forwards
                timer.start()
                run(step, cache)
                timer.mark()
                cache.crop(-q)
                if i >= 2:
                    times.append(timer.read().first)
            rows.append({"context": context, "q": q, "ms": 1000 * statistics.median(times),
                         "ms_min": 1000 * min(times)})  # fmt: skip
    return rows


def relative(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with `ratio`: its cost over the q = 1 cost at the same context."""
    one = {r["context"]: r["ms"] for r in rows if r["q"] == 1}
    return [r | {"ratio": r["ms"] / one[r["context"]] if r["context"] in one else None} for r in rows]


def save(rows: list[dict[str, Any]], key: ProfileKey, meta: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """profile.csv (one row per backend, context, q; rows of backends not measured now are kept) and
    profile.json (the key and the machine) in `folder`; returns every row of the file."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profile.csv"
    kept = []
    if path.is_file():
        measured = {r["backend"] for r in rows}
        kept = [r for r in pd.read_csv(path).to_dict("records") if r["backend"] not in measured]
    rows = kept + rows
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.4f")
    (folder / "profile.json").write_text(json.dumps({"key": asdict(key)} | meta, indent=1))
    return rows


def forward_factory(compile_: bool) -> ForwardFactory:
    """The forward a run with these settings makes: eager, or the compiled path of `--compile`."""
    if not compile_:
        return _eager
    try:
        from methods.compiled import profile_forward
    except ImportError as exc:
        raise BenchError("--compile is not available in this version") from exc
    return profile_forward


def profile(model: Any, names: list[str], contexts: list[int], queries: list[int], repeats: int,
            forward: ForwardFactory = _eager) -> list[dict[str, Any]]:  # fmt: skip
    """Rows of every kernel backend in `names` (the model's linear layers switched to each in turn; left on the
    stock ones), each with its `ratio` to the q = 1 cost."""
    rows: list[dict[str, Any]] = []
    for name in names:
        kernels.apply(model, name)
        rows += [r | {"backend": name} for r in relative(measure(model, contexts, queries, repeats, forward))]
    kernels.apply(model, "aten")
    return rows


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """c(q)/c(1) against q, one line per (backend, context); the roofline's ideal is 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ms, ax_ratio) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    lines = sorted({(r["backend"], r["context"]) for r in rows})
    for backend, context in lines:
        cells = sorted((r for r in rows if (r["backend"], r["context"]) == (backend, context)), key=lambda r: r["q"])
        qs = [r["q"] for r in cells]
        style = "-" if backend == lines[0][0] else "--"
        label = f"{backend}, {context} cached"
        ax_ms.plot(qs, [r["ms"] for r in cells], style, marker="o", markersize=3, label=label)
        ax_ratio.plot(qs, [r["ratio"] for r in cells], style, marker="o", markersize=3, label=label)
    ax_ratio.axhline(1.0, color="grey", linewidth=0.8)
    for ax, ylabel in ((ax_ms, "ms per forward (median)"), (ax_ratio, "c(q) / c(1)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("query tokens per forward (q)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_ratio.set_ylim(bottom=0)
    ax_ms.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)
