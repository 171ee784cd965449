"""Benchmark: our default `lookahead` against the reference implementation's compression ratio (tokens per target
forward), and what each named improvement changes. Exactness against our AR greedy loop is checked for every run.

The reference numbers (hao-ai-lab/LookaheadDecoding under transformers 4.36, on this kind of 2-core CPU): 12
Spec-Bench first turns (ids 81-84 writing, 241-244 summarization, 401-404 math_reasoning), smollm2-135m fp32,
greedy, 96 new tokens, no prompt pool. The default `lookahead` must land within 5% of each.

    python scripts/lookahead_reference.py [--threads 2] [--variants default,commit_full,...]
"""

from __future__ import annotations

import argparse
import os

import torch

from core import models
from core.timing import NullTimer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import StopRule
from tasks.base import TASKS

REFERENCE = {(3, 4, 4): 1.28, (5, 7, 7): 1.64, (5, 15, 15): 1.76}  # (N, W, G): the reference's compression ratio
IDS = {str(i) for i in (*range(81, 85), *range(241, 245), *range(401, 405))}
VARIANTS = {
    "default": {},
    "commit_full": {"commit_full": True},
    "share_prefixes": {"share_prefixes": True},
    "prompt_ngrams": {"prompt_ngrams": True},
    "all": {"commit_full": True, "share_prefixes": True, "prompt_ngrams": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--settings", default="all", help="N,W,G triples to run, e.g. 5,7,7 (default: all three)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = models.load("smollm2-135m")
    task = TASKS.get("specbench")(os.environ.get("DECODEBENCH_DATA"))
    samples = [s for s in task.load() if s.id in IDS]
    prompts = [task.prompt_ids(s, target.tokenizer) for s in samples]
    stop = StopRule(args.max_new_tokens, frozenset(target.eos_ids()))
    reference = [Autoregressive(target, None).generate(ids, stop, NullTimer()).tokens for ids in prompts]
    print(f"{len(samples)} Spec-Bench first turns, smollm2-135m fp32, greedy, {args.max_new_tokens} new tokens")
    print(f"{'N W G':10s} {'variant':15s} {'tau':>6s} {'reference':>9s} {'ratio':>6s} {'exact':>6s}")
    chosen = REFERENCE if args.settings == "all" else {tuple(map(int, args.settings.split(","))): None}
    for (n, w, g), claimed in ((key, REFERENCE.get(key)) for key in chosen):
        for variant in args.variants.split(","):
            options = {"window": w, "ngram": n, "guess": g} | VARIANTS[variant]
            method = METHODS.get("lookahead").create(target, None, options)
            tokens = forwards = exact = 0
            for ids, expected in zip(prompts, reference, strict=True):
                out = method.generate(ids, stop, NullTimer())
                tokens, forwards = tokens + len(out.tokens), forwards + out.target_forwards
                exact += out.tokens == expected
            tau = tokens / forwards
            versus = f"{claimed:9.2f} {tau / claimed:6.3f}" if claimed else f"{'-':>9s} {'-':>6s}"
            print(f"{n} {w} {g:<6d} {variant:15s} {tau:6.3f} {versus} {exact / len(prompts):6.2f}", flush=True)


if __name__ == "__main__":
    main()
