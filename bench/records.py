"""Per-generation records and the one aggregation of them (definitions: docs/metrics.md).

`aggregate` turns a group of records, and the AR baseline's records, into the summary row that `summary.json`,
the `bench run` table and `bench report`'s `summary.csv` all show: one set of names, latencies in milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from methods.base import Decoded

# The speed columns of a summary row (emptied in a report row whose numbers are flagged as impossible).
SPEED = ["tokens_per_s", "tokens_per_s_median", "speedup", "speedup_mean", "speedup_ci_low", "speedup_ci_high",
         "overhead", "roofline_fraction"]  # fmt: skip


def generation_record(role: str, method: str, prompt_id: str, decoded: Decoded, text: str) -> dict[str, Any]:
    """Every per-generation field of docs/metrics.md for one finished generation; `role` is "method" (the method
    under test) or "baseline" (the AR baseline it is compared with)."""
    t = decoded.timing
    n = len(decoded.tokens)
    return {
        "role": role,
        "method": method,
        "prompt_id": prompt_id,
        "new_tokens": n,
        "target_forwards": decoded.target_forwards,
        "tau": n / decoded.target_forwards,
        "accepted": decoded.accepted,
        "draft_forwards": decoded.draft_forwards,
        "ttft_s": t.first,
        "encode_s": decoded.encode_s,
        "total_s": t.total,
        "tpot_s": (t.total - t.first) / (n - 1) if n > 1 else None,
        "tokens_per_s": n / t.total,
        "step_s": [round(s, 7) for s in t.step_times],
        "token_ids": decoded.tokens,
        "text": text,
        "exact": None,
        "first_divergence": None,
        "margin": None,
    }


@torch.inference_mode()
def exactness(model: Any, prompt_ids: list[int], reference: list[int], output: list[int]) -> dict[str, Any]:
    """Compare an output with the autoregressive greedy reference: exact, first divergence, and the
    reference model's top-1 minus top-2 logit at that position (a near-tie explains a flip)."""
    if output == reference:
        return {"exact": True, "first_divergence": None, "margin": None}
    i = next((k for k, (a, b) in enumerate(zip(output, reference, strict=False)) if a != b), None)
    i = min(len(output), len(reference)) if i is None else i
    if i >= len(reference):  # output runs past a reference that stopped: no logit to compare
        return {"exact": False, "first_divergence": i, "margin": None}
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + reference[:i]], device=device)
    logits = model(ids, logits_to_keep=1).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return {"exact": False, "first_divergence": i, "margin": float(top[0] - top[1])}


def bootstrap_mean(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` by resampling them with replacement."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def aggregate(records: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The summary row of a group of records; with baseline records, the speedup on the shared prompt ids
    (a ratio of totals) and the mean per-sample ratio with its bootstrap 95% interval."""
    if not records:
        return {"samples": 0}
    tokens = sum(r["new_tokens"] for r in records)
    ms = {k: [r[k] * 1e3 for r in records if r.get(k) is not None] for k in ("ttft_s", "tpot_s", "encode_s")}
    exact = [r["exact"] for r in records if r.get("exact") is not None]
    row: dict[str, Any] = {
        "samples": len(records),
        "new_tokens": tokens,
        "tokens_per_s": tokens / sum(r["total_s"] for r in records),
        "tokens_per_s_median": _pct([r["tokens_per_s"] for r in records], 50),
        "tau": tokens / sum(r["target_forwards"] for r in records),
        "exact_rate": sum(exact) / len(exact) if exact else None,
        "ttft_ms_median": _pct(ms["ttft_s"], 50),
        "ttft_ms_p90": _pct(ms["ttft_s"], 90),
        "tpot_ms_median": _pct(ms["tpot_s"], 50),
        "tpot_ms_p90": _pct(ms["tpot_s"], 90),
        "encode_ms_median": _pct(ms["encode_s"], 50),
        "paired_samples": 0,
        "speedup": None,
    }
    by_id = {r["prompt_id"]: r for r in baseline or []}
    pairs = [(r, by_id[r["prompt_id"]]) for r in records if r["prompt_id"] in by_id]
    if pairs:
        rate = sum(m["new_tokens"] for m, _ in pairs) / sum(m["total_s"] for m, _ in pairs)
        base = sum(b["new_tokens"] for _, b in pairs) / sum(b["total_s"] for _, b in pairs)
        ratios = np.array([m["tokens_per_s"] / b["tokens_per_s"] for m, b in pairs])
        low, high = bootstrap_mean(ratios)
        row |= {
            "paired_samples": len(pairs),
            "baseline_tokens_per_s": base,
            "speedup": rate / base,
            "speedup_mean": float(ratios.mean()),
            "speedup_ci_low": low,
            "speedup_ci_high": high,
            "overhead": row["tau"] / (rate / base),
        }
    return row
