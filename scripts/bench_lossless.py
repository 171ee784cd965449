"""Benchmark: lossless methods against our `ar` loop, each cell with its own interleaved AR baseline in the
same process. Prints tau, speedup (ratio of totals), exact rate and tokens/s per (task, method, settings).

    python scripts/bench_lossless.py --preset cpu-smollm2          # issue 3's smollm2 table
    python scripts/bench_lossless.py --preset cpu-qwen-spec        # qwen 1.5B target, 0.5B draft, bf16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.runner import RunConfig, run

PRESETS = {
    "cpu-smollm2": dict(
        model="smollm2-135m", draft=None, dtype="float32", tasks=["mtbench", "cnndm"], limit=8, max_new_tokens=128,
        cells=[
            ("pld", {}),
            ("hf-pld", {}),
            ("jacobi", {"window": 4}),
            ("lookahead", {"window": 2, "ngram": 3, "guess": 2}),
            ("lookahead", {"window": 5, "ngram": 3, "guess": 5}),
            ("lookahead", {"window": 7, "ngram": 4, "guess": 7}),
            ("lookahead", {"window": 15, "ngram": 5, "guess": 15}),
        ],
    ),
    "cpu-qwen-spec": dict(
        model="qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b", dtype="bfloat16", tasks=["humaneval", "mtbench"],
        limit=4, max_new_tokens=96,
        cells=[("speculative", {"num_draft": 4}), ("speculative", {"num_draft": 4, "adaptive": True}),
               ("hf-assisted", {})],
    ),
}  # fmt: skip


def label(method: str, options: dict) -> str:
    return method + "".join(f" {k}={v}" for k, v in options.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smollm2")
    parser.add_argument("--limit", type=int, default=None, help="override the preset's sample count")
    parser.add_argument("--out", default="runs/bench-lossless", help="results tree (finished cells are reused)")
    args = parser.parse_args()
    p = PRESETS[args.preset]
    rows = []
    for task in p["tasks"]:
        for method, options in p["cells"]:
            name = label(method, options).replace(" ", "_").replace("=", "")
            config = RunConfig(
                method=method, task=task, model=p["model"], draft=p["draft"] if "assist" in method or "spec" in method
                else None, dtype=p["dtype"], limit=args.limit or p["limit"], max_new_tokens=p["max_new_tokens"],
                options=options, out=str(Path(args.out) / args.preset / task / name),
                turns=1,  # first turns of multi-turn tasks, as in the papers' speed tables
            )  # fmt: skip
            base, result = run(config).summaries
            rows.append((task, label(method, options), result, base))
            print(f"{task:10s} {label(method, options):40s} tau {result['tau']:.3f} speedup {result['speedup']:.3f} "
                  f"exact {result['exact_rate']}", flush=True)  # fmt: skip
    print(f"\n{args.preset}: model {p['model']} ({p['dtype']}), {args.limit or p['limit']} samples per task, "
          f"{p['max_new_tokens']} new tokens")  # fmt: skip
    header = f"{'task':10s} {'method':40s} {'tau':>6s} {'speedup':>8s} {'exact':>6s} {'tok/s':>7s} {'ar tok/s':>8s}"
    print(header)
    print("-" * len(header))
    for task, name, r, b in rows:
        exact = "-" if r["exact_rate"] is None else f"{r['exact_rate']:.2f}"
        print(f"{task:10s} {name:40s} {r['tau']:6.3f} {r['speedup']:8.3f} {exact:>6s} "
              f"{r['tokens_per_s']:7.2f} {b['tokens_per_s']:8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
