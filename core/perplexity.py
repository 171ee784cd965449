"""Perplexity of a causal LM on fixed texts: exp of the mean next-token negative log-likelihood over every predicted
token of every text. Each text is encoded alone (with the tokenizer's BOS when it adds one), batches are right-padded
with attention masks, only real tokens are scored, log-probabilities are taken in fp32. The model is only called as
`model(input_ids=..., attention_mask=...)`, so any causal LM works, quantized linear layers included."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from core.errors import BenchError


def perplexity(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int = 8, max_tokens: int = 512
) -> dict[str, Any]:
    """{"perplexity", "tokens" (predicted tokens scored), "texts"} of `model` on `texts`, each cut to its first
    `max_tokens` tokens. Texts are batched shortest first (less padding; the result does not depend on batching)."""
    if not texts:
        raise BenchError("perplexity needs at least one text")
    if batch_size < 1 or max_tokens < 2:
        raise BenchError(f"perplexity needs batch_size >= 1 and max_tokens >= 2 (got {batch_size}, {max_tokens})")
    encoded = sorted((tokenizer(t, verbose=False)["input_ids"][:max_tokens] for t in texts), key=len)
    device = _device(model)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            ids = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, seq in enumerate(batch):  # one row at a time: an fp32 copy of all logits could be large
                if len(seq) < 2:
                    continue
                scores = logits[row, : len(seq) - 1].float()
                targets = torch.tensor(seq[1:], device=scores.device)
                nll += F.cross_entropy(scores, targets, reduction="sum").item()
                count += len(seq) - 1
    if count == 0:
        raise BenchError("perplexity: no text has two tokens to score")
    try:
        value = math.exp(nll / count)
    except OverflowError:  # a mean NLL above ~709 nats: a broken model, reported as inf
        value = math.inf
    return {"perplexity": value, "tokens": count, "texts": len(texts)}


def _device(model: Any) -> torch.device:
    """Where the model's parameters are (the CPU for a module without any)."""
    first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return first.device if first is not None else torch.device("cpu")
