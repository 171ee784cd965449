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
         "speedup_of_means", "speedup_time", "speedup_decode", "speedup_predicted", "speedup_repeat_mean",
         "speedup_repeat_std", "overhead", "roofline_fraction"]  # fmt: skip


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
        "drafted": decoded.drafted,
        "step_tokens": decoded.step_tokens,
        "budget": decoded.budget,
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


def text_exactness(output: str, reference: str) -> dict[str, Any]:
    """Exactness of another engine's output (its own tokens): the texts compared; the divergence is a character."""
    if output == reference:
        return {"exact": True, "first_divergence": None, "margin": None}
    i = next((k for k, (a, b) in enumerate(zip(output, reference, strict=False)) if a != b), None)
    return {"exact": False, "first_divergence": min(len(output), len(reference)) if i is None else i, "margin": None}


def batch_fields(decoded: Decoded, batch: int) -> dict[str, Any]:
    """A batched generation's own numbers (docs/metrics.md): its latency ends at its last token's batched forward;
    `total_s`, which every throughput sums, is its share of the batch's time (the batch's time over its size)."""
    t, n = decoded.timing, len(decoded.tokens)
    marks = [t.first, *t.steps]
    latency = marks[n - 1] if n and n - 1 < len(marks) else t.total
    return {
        "batch": batch,
        "batch_total_s": t.total,
        "latency_s": latency,
        "total_s": t.total / batch,
        "tokens_per_s": n * batch / t.total,
        "tpot_s": (latency - t.first) / (n - 1) if n > 1 else None,
    }


MIN_CI_PROMPTS = 10  # below this many paired prompts an interval is shown with a warning


def bootstrap_ratio(units: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the speedup as a ratio of totals, resampling prompts with replacement.

    `units` has one row per prompt: (method tokens, method seconds, baseline tokens, baseline seconds), each
    summed over the prompt's repeats; a resample's speedup is (sum tokens / sum seconds) of the method over the
    baseline's, the headline statistic itself."""
    rng = np.random.default_rng(seed)
    picked = units[rng.integers(0, len(units), (resamples, len(units)))].sum(axis=1)
    ratios = (picked[:, 0] / picked[:, 1]) / (picked[:, 2] / picked[:, 3])
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def acceptance(records: list[dict[str, Any]], positions: int = 8) -> dict[str, Any]:
    """Acceptance of draft tokens (vLLM's spec_decode metrics): accepted / drafted over every forward that had a
    draft, and per draft position i the share of forwards drafting at least i + 1 tokens whose i + 1-th was
    accepted. Empty for methods that do not report their drafts."""
    steps = [
        (d, a - 1)
        for r in records
        if r.get("drafted")
        for d, a in zip(r["drafted"], r["accepted"], strict=True)
        if d > 0
    ]
    if not steps:
        return {}
    drafted = np.array([d for d, _ in steps])
    taken = np.minimum(np.array([max(a, 0) for _, a in steps]), drafted)
    reach = [int((drafted > i).sum()) for i in range(min(positions, int(drafted.max())))]
    by_position = [float(((drafted > i) & (taken > i)).sum()) / n for i, n in enumerate(reach)]
    return {"acceptance_rate": float(taken.sum() / drafted.sum()), "acceptance_by_position": by_position}


def _unit(record: dict[str, Any]) -> tuple[Any, ...]:
    """The prompt a record belongs to (its repeats share it)."""
    return (record.get("sample_id", record["prompt_id"]), record.get("turn", 1))


def _ratio_of_totals(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> float:
    """(method tokens / method seconds) over (baseline tokens / baseline seconds), summed over the pairs."""
    m_tokens, m_s, b_tokens, b_s = (sum(p[i][k] for p in pairs) for i in (0, 1) for k in ("new_tokens", "total_s"))
    return (m_tokens / m_s) / (b_tokens / b_s)


def speedup(records: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """The speedup on the shared prompt ids (a ratio of totals) with its bootstrap 95% interval over prompts,
    Spec-Bench's ratio of mean tokens/s, the mean per-sample ratio, and with repeats the spread across them."""
    by_id = {r["prompt_id"]: r for r in baseline}
    pairs = [(r, by_id[r["prompt_id"]]) for r in records if r["prompt_id"] in by_id]
    if not pairs:
        return {"paired_samples": 0, "speedup": None}
    totals: dict[tuple[Any, ...], np.ndarray] = {}
    for m, b in pairs:
        row = np.array([m["new_tokens"], m["total_s"], b["new_tokens"], b["total_s"]], dtype=float)
        totals[_unit(m)] = totals.get(_unit(m), 0) + row
    units = np.stack(list(totals.values()))
    low, high = bootstrap_ratio(units)
    base = sum(b["new_tokens"] for _, b in pairs) / sum(b["total_s"] for _, b in pairs)
    out = {
        "paired_samples": len(pairs),
        "paired_prompts": len(units),
        "baseline_tokens_per_s": base,
        "speedup": _ratio_of_totals(pairs),
        # total time over the same prompts: the speedup of methods whose tokens are another tokenizer's (llm2slm)
        "speedup_time": sum(b["total_s"] for _, b in pairs) / sum(m["total_s"] for m, _ in pairs),
        "speedup_ci_low": low,
        "speedup_ci_high": high,
        "speedup_of_means": float(np.mean([m["tokens_per_s"] for m, _ in pairs]))
        / float(np.mean([b["tokens_per_s"] for _, b in pairs])),
        "speedup_mean": float(np.mean([m["tokens_per_s"] / b["tokens_per_s"] for m, b in pairs])),
    }
    repeats = sorted({m.get("repeat", 1) for m, _ in pairs})
    if len(repeats) > 1:
        per = [_ratio_of_totals([p for p in pairs if p[0].get("repeat", 1) == k]) for k in repeats]
        out |= {"repeats": len(repeats), "speedup_repeat_mean": float(np.mean(per)),
                "speedup_repeat_std": float(np.std(per, ddof=1))}  # fmt: skip
    return out


def aggregate(records: list[dict[str, Any]], baseline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The summary row of a group of records; with baseline records, the speedup and its statistics (`speedup`)."""
    if not records:
        return {"samples": 0}
    tokens = sum(r["new_tokens"] for r in records)
    ms = {k: [r[k] * 1e3 for r in records if r.get(k) is not None] for k in ("ttft_s", "tpot_s", "encode_s")}
    ms["e2e"] = [r.get("latency_s", r["total_s"]) * 1e3 for r in records]
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
        "e2e_ms_median": _pct(ms["e2e"], 50),
    }
    row |= acceptance(records) | speedup(records, baseline or [])
    if row["speedup"] is not None:
        row["overhead"] = row["tau"] / row["speedup"]
    return row
