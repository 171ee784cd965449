"""Benchmark: the target's forward cost for q query tokens on a KV cache, transformers' stock `sdpa` against
`decodebench_sdpa` (core.attention), on a randomly initialised model with SmolLM2-135M's shape (no download).
Timed: the decoder stack (the LM head is the same for both); the two alternate forward by forward.

q = 1 is an autoregressive step; q > 1 a verification step (the pending token and q - 1 draft tokens), as a
plain chain (the mask transformers builds: prompt lookup, speculative) or with `--custom-mask`, the engine's own
4D mask (Lookahead's path). Milliseconds per forward, the median of `--repeats` timed forwards after a warm-up.

    python scripts/attention_cost.py [--threads 1] [--repeats 20] [--contexts 200 1000] [--queries 1 5 21]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core.attention import NAME
from methods.decode import Draft, _attention
from methods.kvcache import new_cache

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
)
IMPLEMENTATIONS = ("sdpa", NAME)


def cell_ms(model, context: int, q: int, repeats: int, custom_mask: bool) -> list[float]:
    """Median ms of one decoder-stack forward of q tokens on `context` cached tokens, per implementation; the
    implementations alternate forward by forward on one cache (the q positions are cropped after each)."""
    gen = torch.Generator().manual_seed(context + q)
    vocab = model.config.vocab_size
    cache = new_cache(model)
    model(torch.randint(vocab, (1, context), generator=gen), past_key_values=cache)
    step = torch.randint(vocab, (1, q), generator=gen)
    kwargs = {}
    if custom_mask and q > 1:
        positions, mask = _attention(Draft.chain(step[0, 1:].tolist()), context, step.device, model, cache)
        kwargs = {"position_ids": positions, "attention_mask": mask}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    for i in range(repeats + 2):  # two warm-up rounds
        for impl in IMPLEMENTATIONS:
            model.set_attn_implementation(impl)
            start = time.perf_counter()
            model.model(step, past_key_values=cache, **kwargs)  # the LM head costs the same either way
            elapsed = time.perf_counter() - start
            cache.crop(-q)
            if i >= 2:
                times[impl].append(elapsed)
    return [1000 * statistics.median(times[impl]) for impl in IMPLEMENTATIONS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per cell (median)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[200, 1000], help="cached tokens")
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 5, 21], help="query tokens per forward")
    parser.add_argument("--custom-mask", action="store_true", help="verification steps with the engine's 4D mask")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()
    rows = []
    with torch.inference_mode():
        for context in args.contexts:
            for q in args.queries:
                rows.append((context, q, *cell_ms(model, context, q, args.repeats, args.custom_mask)))
    mask = "engine 4D mask" if args.custom_mask else "transformers' mask"
    print(f"SmolLM2-135M shape (30 layers, 9 heads / 3 KV heads), fp32, {args.threads} thread(s), {mask}")
    print(f"ms per forward of the decoder stack (no LM head), median of {args.repeats}")
    print(f"{'cached':>7} {'q':>3} {'stock sdpa':>11} {NAME:>17} {'stock/ours':>11}")
    for context, q, stock, ours in rows:
        print(f"{context:>7} {q:>3} {stock:>11.2f} {ours:>17.2f} {stock / ours:>11.2f}")


if __name__ == "__main__":
    main()
