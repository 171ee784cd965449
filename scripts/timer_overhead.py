"""Benchmark: the timing core's own overhead. AR decoding with timing marks vs. without, on the same prompts,
alternating, printed as a ratio (must stay under 1.02).

    python scripts/timer_overhead.py [--model smollm2-135m] [--prompts 8] [--max-new-tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

from core import models
from core.presets import DEFAULT_MODEL
from core.timing import NullTimer, Timer
from methods.ar import Autoregressive
from methods.decode import StopRule
from tasks.base import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    target = models.load(args.model)
    task = TASKS.get("mtbench")(os.environ.get("DECODEBENCH_DATA"))
    prompts = [task.prompt_ids(s, target.tokenizer) for s in task.load(args.prompts)]
    method = Autoregressive(target, None)
    stop = StopRule(args.max_new_tokens)  # no EOS: every generation has the same length
    method.generate(prompts[0], StopRule(16), Timer())  # warm-up
    totals = {"timed": 0.0, "untimed": 0.0}
    for _ in range(args.rounds):
        for ids in prompts:
            for name, timer in (("timed", Timer()), ("untimed", NullTimer())):
                t0 = time.perf_counter()
                method.generate(ids, stop, timer)
                totals[name] += time.perf_counter() - t0
    tokens = args.rounds * len(prompts) * args.max_new_tokens
    print(f"model {args.model}, {len(prompts)} prompts x {args.rounds} rounds, {args.max_new_tokens} tokens each")
    print(f"with marks:    {tokens / totals['timed']:.2f} tok/s")
    print(f"without marks: {tokens / totals['untimed']:.2f} tok/s")
    print(f"overhead ratio (timed / untimed wall time): {totals['timed'] / totals['untimed']:.4f} (target < 1.02)")


if __name__ == "__main__":
    main()
