"""Paired bootstrap of a corpus metric's difference between two systems on the same sentences (Koehn 2004; the
idea of sacreBLEU's `paired_bs`): resample sentences with replacement, recompute both corpus scores from their
per-sentence sufficient statistics, and take the percentile interval of the difference."""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 1000


def corpus_metric(name: str) -> Any:
    """A sacreBLEU metric by name ("bleu": 13a, case-sensitive; "chrf": chrF2), as the wmt task scores."""
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[name]()


def paired_bootstrap(
    metric: str, references: list[str], a: list[str], b: list[str], resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Score `a` minus score `b` on the same references, with the 95% bootstrap interval of that difference and
    the share of resamples in which `a` does not beat `b` (a one-sided p-value for "a is better")."""
    if not (len(references) == len(a) == len(b)) or not references:
        raise ValueError("paired_bootstrap needs the same, non-zero number of references and outputs")
    scorer = corpus_metric(metric)
    stats = [np.asarray(scorer._extract_corpus_statistics(h, [references]), dtype=float) for h in (a, b)]

    def score(rows: np.ndarray) -> float:
        return scorer._compute_score_from_stats(rows.tolist()).score

    delta = score(stats[0].sum(0)) - score(stats[1].sum(0))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(references), size=(resamples, len(references)))
    deltas = np.array([score(stats[0][i].sum(0)) - score(stats[1][i].sum(0)) for i in draws])
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {"delta": delta, "low": float(low), "high": float(high), "p_not_better": float(np.mean(deltas <= 0))}


def signature(metric: str) -> str:
    """sacreBLEU's signature of the metric as scored here (one reference; tokenizer, case, smoothing, version)."""
    scorer = corpus_metric(metric)
    scorer.corpus_score(["-"], [["-"]])  # sacreBLEU states the signature of a metric that has scored
    return str(scorer.get_signature())
