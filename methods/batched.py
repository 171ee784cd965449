"""Batched autoregressive decoding (`--batch-size`): several prompts through one forward per step.

Prompts are padded on the left with the pad id (attention mask 0 on the pads) and each row's positions count from
its first real token, so every row sees what it would see alone. Each row stops by its own `StopRule` (EOS ids,
max new tokens, stop strings, as the engine checks them); a row that has ended keeps being fed the pad token until
every row has ended: the batch keeps one shape, no step pays an index copy of every layer's keys and values to
drop a row, and it is what transformers' `generate()` does, so `ar` and `hf` compare like for like.
One host sync per step: the new tokens, read once for the stop checks. Greedy rows equal batch-1 greedy up to
floating-point reassociation (exact in fp32 on our tests); sampling draws each row from the `Sampler`'s
distribution with the sampler's seeded generator.
"""

from __future__ import annotations

from typing import Any

import torch

from core.errors import BenchError
from core.timing import Timer
from methods.decode import Sampler, StopRule
from methods.kvcache import new_cache


def pad_id(tokenizer: Any, eos_ids: frozenset[int]) -> int:
    """The id fed at padded positions: the tokenizer's pad id, else the smallest EOS id (0 without one)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return pad if pad is not None else min(eos_ids, default=0)


def check_batch(prompts: list[list[int]], stops: list[StopRule]) -> None:
    """Refuse a batch that is empty, has an empty prompt, or not one stop rule per prompt."""
    if not prompts or len(prompts) != len(stops):
        raise BenchError(f"a batch needs one stop rule per prompt (got {len(prompts)} prompts, {len(stops)} rules)")
    if not all(prompts):
        raise BenchError("a batched prompt is empty")


def left_pad(prompts: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (batch, longest prompt) padded on the left with `pad`, and the attention mask (0 on the pads)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


class _Rows:
    """Each row's new tokens and whether it has ended, by its own stop rule."""

    def __init__(self, stops: list[StopRule]) -> None:
        self.stops = stops
        self.tokens: list[list[int]] = [[] for _ in stops]
        self.live = [True] * len(stops)

    def add(self, new: list[int]) -> bool:
        """Append one token to every live row; True if some row ended with it."""
        ended = False
        for i, token in enumerate(new):
            if self.live[i]:
                self.tokens[i].append(token)
                if self.stops[i].end(self.tokens[i], len(self.tokens[i]) - 1) is not None:
                    self.live[i] = False
                    ended = True
        return ended


def _next(logits: torch.Tensor, sampler: Sampler | None) -> tuple[torch.Tensor, list[int]]:
    """The next token of every row from its last logits row (argmax, or a draw from the sampler's distribution on
    its CPU generator, one per row in row order), as a (batch,) tensor on the logits' device and as a list: the
    step's one host sync."""
    if sampler is None:
        following = logits.argmax(-1)
        return following, following.tolist()
    drawn = torch.multinomial(sampler.probs(logits).cpu(), 1, generator=sampler.generator).flatten()
    return drawn.to(logits.device), drawn.tolist()


@torch.inference_mode()
def decode_batch(
    model: Any, prompts: list[list[int]], stops: list[StopRule], timer: Timer, pad: int, sampler: Sampler | None
) -> list[list[int]]:
    """Decode every prompt with one forward per step of the whole batch; returns each row's new tokens.

    Marks `timer` after the prefill's next tokens are known and after every later batched forward."""
    check_batch(prompts, stops)
    device = next(model.parameters()).device
    rows = _Rows(stops)
    cache = new_cache(model)
    timer.start()  # as for batch 1: the cache is made before, the input tensors inside the timed run
    ids, prompt_mask = left_pad(prompts, pad, device)
    batch, length = ids.shape
    longest = max(stop.max_new_tokens for stop in stops)
    mask = torch.ones(batch, length + longest, dtype=prompt_mask.dtype, device=device)  # fed tokens: mask 1
    mask[:, :length] = prompt_mask
    positions = (prompt_mask.cumsum(-1) - 1).clamp_(min=0)  # pads sit at 0; each row counts from its first token
    out = model(ids, attention_mask=prompt_mask, position_ids=positions, past_key_values=cache, logits_to_keep=1)
    following, new = _next(out.logits[:, -1], sampler)
    ended = rows.add(new)
    timer.mark()
    step = positions[:, -1:]
    live = torch.ones(batch, dtype=torch.bool, device=device)
    while any(rows.live):
        if ended:
            live = torch.tensor(rows.live, device=device)
        step = step + 1
        length += 1
        inputs = torch.where(live, following, pad)[:, None]  # an ended row is fed the pad token
        out = model(inputs, attention_mask=mask[:, :length], position_ids=step, past_key_values=cache, logits_to_keep=1)
        following, new = _next(out.logits[:, -1], sampler)
        ended = rows.add(new)
        timer.mark()
    return rows.tokens
