"""Per-generation records and per-run summaries, as defined in shared/metrics.md."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from methods.base import Decoded


def generation_record(role: str, method: str, prompt_id: str, decoded: Decoded, text: str) -> dict[str, Any]:
    """Every per-generation field of shared/metrics.md for one finished generation."""
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


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(records: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Aggregate one method's records; with baseline records, the speedup on the shared prompt ids."""
    if not records:
        return {"samples": 0}
    tokens = sum(r["new_tokens"] for r in records)
    seconds = sum(r["total_s"] for r in records)
    forwards = sum(r["target_forwards"] for r in records)
    exact = [r["exact"] for r in records if r.get("exact") is not None]
    out: dict[str, Any] = {
        "method": records[0]["method"],
        "samples": len(records),
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "tau": tokens / forwards,
        "ttft_s_median": _median([r["ttft_s"] for r in records]),
        "tpot_s_median": _median([r["tpot_s"] for r in records if r["tpot_s"] is not None]),
        "exact_rate": sum(exact) / len(exact) if exact else None,
        "speedup": None,
    }
    if baseline:
        by_id = {r["prompt_id"]: r for r in baseline}
        shared = [r for r in records if r["prompt_id"] in by_id]
        if shared:
            base = [by_id[r["prompt_id"]] for r in shared]
            rate = sum(r["new_tokens"] for r in shared) / sum(r["total_s"] for r in shared)
            base_rate = sum(r["new_tokens"] for r in base) / sum(r["total_s"] for r in base)
            out["speedup"] = rate / base_rate
    return out
