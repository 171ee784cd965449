"""Benchmark: our `ar` loop against transformers' `generate()` on the same prompts, in one process,
interleaved per sample. Prints `ar` tokens/s over `hf` tokens/s (target >= 1.0) and `ar`'s roofline fraction.

    python scripts/ar_vs_hf.py [--model smollm2-135m] [--limit 8] [--max-new-tokens 128] [--dtype float32]
"""

from __future__ import annotations

import argparse
import tempfile

from bench.runner import RunConfig, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="mtbench")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="ar-vs-hf-")
    config = RunConfig(
        method="hf", task=args.task, model=args.model, dtype=args.dtype, limit=args.limit,
        max_new_tokens=args.max_new_tokens, out=out,
    )  # fmt: skip
    baseline, hf = run(config).summaries
    print(f"ar: {baseline['tokens_per_s']:.2f} tok/s, hf: {hf['tokens_per_s']:.2f} tok/s over {hf['samples']} samples")
    print(f"ar / hf tokens/s: {1.0 / hf['speedup']:.3f} (target >= 1.0); hf exact rate vs ar: {hf['exact_rate']}")
    print(
        f"ar roofline fraction: {baseline['roofline_fraction']:.1%} "
        f"(roofline {baseline['roofline_tokens_per_s']:.1f} tok/s at the measured memory bandwidth)"
    )
    print(f"run directory: {out}")


if __name__ == "__main__":
    main()
