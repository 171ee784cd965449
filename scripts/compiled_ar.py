"""Benchmark: compiled autoregressive decoding (`--compile`) against transformers' eager `generate()`.

In one process, on the same prompts (first turns), interleaved per prompt: transformers' eager `generate()`, our
eager AR loop, our compiled AR loop and (unless --no-hf-compile) `generate()` with transformers' static cache and
compile. Prints each one's tokens/s (ratio of totals), compiled AR / eager generate (target >= 1.5), compiled AR's
roofline fraction (bench.runner.add_roofline: bandwidth / bytes per token; target >= 40%), whether compiled AR
equals eager AR token for token, and the compile seconds (not timed).

    python scripts/compiled_ar.py [--model smollm2-135m] [--task mtbench] [--limit 8] [--max-new-tokens 128]
                                  [--dtype float32] [--threads N] [--no-hf-compile]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch._dynamo.utils import counters

from bench.runner import add_roofline
from core import models
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import Decoded, Method
from methods.compiled import CompiledModel
from methods.decode import StopRule
from methods.hf import HFGenerate
from tasks.base import TASKS


def decoders(target: models.LoadedModel, hf_compile: bool) -> dict[str, Method]:
    """The decoders by name; the compiled ones share one CompiledModel (transformers' compile ignores it)."""
    compiled = CompiledModel(target.model)
    found: dict[str, Method] = {
        "generate (eager)": HFGenerate(target, None),
        "ar (eager)": Autoregressive(target, None),
        "ar (compiled)": Autoregressive(target, None),
    }
    if hf_compile:
        found["generate (static+compile)"] = HFGenerate(target, None)
    for name, method in found.items():
        if "compile" in name:
            method.use_compiled(compiled)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="mtbench")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-hf-compile", dest="hf_compile", action="store_false", help="skip transformers' compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = models.load(args.model, args.dtype)
    task = TASKS.get(args.task)()
    prompts = [task.prompt_ids(s, target.tokenizer, []) for s in task.load(args.limit)]
    found = decoders(target, args.hf_compile)
    compile_s = {name: m.warm_up_compiled(prompts[0]) for name, m in found.items() if m.compiled is not None}
    found["ar (compiled)"].compiled.seal()
    stop = StopRule(args.max_new_tokens, frozenset(target.eos_ids()), task.stop_strings, target.tokenizer)
    for method in found.values():  # one untimed generation each
        method.generate(prompts[0], StopRule(16, stop.eos_ids), Timer(target.device))
    runs: dict[str, list[Decoded]] = {name: [] for name in found}
    graphs = counters["stats"]["unique_graphs"]
    for ids in prompts:
        for name, method in found.items():
            runs[name].append(method.generate(ids, stop, Timer(target.device)))
    report(target, prompts, runs, compile_s)
    print(f"graphs compiled while timing: {counters['stats']['unique_graphs'] - graphs} (ours would raise)")


def report(target: models.LoadedModel, prompts: list[list[int]], runs: dict[str, list[Decoded]],
           compile_s: dict[str, float]) -> None:  # fmt: skip
    """Tokens/s per decoder (ratio of totals), the targets, exactness and compile seconds."""
    rate = {name: sum(len(d.tokens) for d in ds) / sum(d.timing.total for d in ds) for name, ds in runs.items()}
    for name, value in rate.items():
        extra = f", compiled in {compile_s[name]:.1f} s before timing" if name in compile_s else ""
        print(f"{name:28s} {value:7.2f} tok/s{extra}")
    ratio = rate["ar (compiled)"] / rate["generate (eager)"]
    print(f"compiled ar / eager generate: {ratio:.3f} (target >= 1.5); eager ar / eager generate: "
          f"{rate['ar (eager)'] / rate['generate (eager)']:.3f}")  # fmt: skip
    pairs = zip(prompts, runs["ar (compiled)"], strict=True)
    records = [{"prompt_tokens": len(ids), "new_tokens": len(d.tokens)} for ids, d in pairs]
    rows = [{"samples": len(records), "tau": 1.0, "method": "ar", "tokens_per_s": rate[n]}
            for n in ("ar (eager)", "ar (compiled)")]  # fmt: skip
    add_roofline(rows, records, target)
    eager, compiled = rows
    print(f"roofline {eager['roofline_tokens_per_s']:.1f} tok/s: eager ar reaches {eager['roofline_fraction']:.1%}, "
          f"compiled ar {compiled['roofline_fraction']:.1%} (target >= 40%)")  # fmt: skip
    same = sum(a.tokens == b.tokens for a, b in zip(runs["ar (eager)"], runs["ar (compiled)"], strict=True))
    print(
        f"compiled ar equals eager ar on {same}/{len(prompts)} prompts; {len(prompts)} prompts, "
        f"{sum(len(d.tokens) for d in runs['ar (compiled)'])} tokens, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s in all)")
