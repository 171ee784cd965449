"""Benchmark: where a decode step's time goes, per op and input shape (torch.profiler), for an AR step (q = 1) and a
verification step (q = 8) on the same cache, with each linear-kernel backend (core.kernels).

    python scripts/step_ops.py [--model smollm2-135m] [--dtype float32] [--context 200] [--q 8] [--steps 20]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from core import kernels, models
from methods.kvcache import new_cache


def table(model, context: int, q: int, steps: int, rows: int) -> str:
    """The profiler's table of `steps` forwards of q tokens on `context` cached tokens, by op and shape."""
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    cache = new_cache(model)
    model(torch.randint(vocab, (1, context), generator=gen), past_key_values=cache, logits_to_keep=1)
    step = torch.randint(vocab, (1, q), generator=gen)
    for _ in range(3):  # warm-up
        model(step, past_key_values=cache, logits_to_keep=q)
        cache.crop(-q)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            model(step, past_key_values=cache, logits_to_keep=q)
            cache.crop(-q)
    averages = prof.key_averages(group_by_input_shape=True)
    total_ms = sum(e.self_cpu_time_total for e in averages) / 1000 / steps
    head = f"q={q}: {total_ms:.2f} ms of op self time per forward"
    return head + "\n" + averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=28)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--context", type=int, default=200)
    parser.add_argument("--q", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args()
    model = models.load(args.model, dtype=args.dtype).model
    with torch.inference_mode():
        for name in kernels.KERNELS:
            kernels.apply(model, name)
            threads = torch.get_num_threads()
            print(f"=== kernels {name}, {args.model} {args.dtype}, {args.context} cached, {threads} threads")
            for q in (1, args.q):
                print(table(model, args.context, q, args.steps, args.rows))


if __name__ == "__main__":
    main()
