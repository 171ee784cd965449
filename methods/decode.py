"""The decode engine shared by every method that calls the model's forward itself.

One loop: prefill, then repeatedly "take candidate tokens from a drafter (none for autoregressive decoding),
verify them in one target forward, commit the accepted prefix plus the target's own next token, roll the KV
cache back past the rejected part". Autoregressive decoding is this loop with an empty drafter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from bench.timing import Timer


@dataclass
class StopRule:
    """When a generation ends: max new tokens, any EOS id, or a stop string in the generated text."""

    max_new_tokens: int
    eos_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    tokenizer: Any = None

    def end(self, tokens: list[int], start: int) -> int | None:
        """Length at which `tokens` ends, looking only at positions from `start` on; None to go on."""
        for i in range(start, len(tokens)):
            if tokens[i] in self.eos_ids or i + 1 >= self.max_new_tokens:
                return i + 1
            if self.stop_strings:
                text = self.tokenizer.decode(tokens[: i + 1])
                if any(s in text for s in self.stop_strings):
                    return i + 1
        return None


@dataclass
class Sampler:
    """Temperature / top-k / top-p sampling with its own seeded generator (reproducible per generation)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.generator.manual_seed(self.seed if seed is None else seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Next-token distribution(s) from logits of shape (..., vocab), in float32."""
        logits = logits.float() / self.temperature
        if self.top_k > 0:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return logits.softmax(-1)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """Draw one token id per row of `probs` (sampling happens on the CPU generator)."""
        return torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(-1).to(probs.device)


class Drafter(Protocol):
    """A source of candidate tokens to verify: prompt lookup, a draft model, ..."""

    draft_forwards: int

    def propose(self, context: list[int], max_tokens: int) -> list[int]:
        """Up to `max_tokens` guesses for the tokens that follow `context` (prompt + committed tokens)."""
        ...


@dataclass
class LoopResult:
    tokens: list[int]
    accepted: list[int]


@torch.inference_mode()
def verify_loop(
    model: Any,
    prompt_ids: list[int],
    stop: StopRule,
    timer: Timer,
    drafter: Drafter | None = None,
    sampler: Sampler | None = None,
) -> LoopResult:
    """Decode with the target model, verifying `drafter`'s candidates greedily (or none: autoregressive).

    With a sampler and no drafter this is autoregressive sampling. Marks `timer` after the prefill and after
    every target forward; returns the new tokens and how many each target forward committed.
    """
    if sampler is not None and drafter is not None:
        raise ValueError("sampling verification of drafted tokens is done by the speculative method itself")
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    prompt = torch.tensor([prompt_ids], device=device)
    timer.start()
    logits = model(prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
    pending = _pick(logits, sampler)
    tokens = [int(pending)]
    accepted = [1]
    timer.mark()
    end = stop.end(tokens, 0)
    while end is None:
        candidates = drafter.propose(prompt_ids + tokens, stop.max_new_tokens - len(tokens) - 1) if drafter else []
        step_input = torch.tensor([[tokens[-1], *candidates]], device=device) if candidates else pending.view(1, 1)
        logits = model(step_input, past_key_values=cache, use_cache=True).logits[0]
        if not candidates:
            pending = _pick(logits[-1], sampler)
            new = [int(pending)]
        else:
            predicted = logits.argmax(-1).tolist()
            n = 0
            while n < len(candidates) and candidates[n] == predicted[n]:
                n += 1
            new = candidates[:n] + [predicted[n]]
            pending = torch.tensor(predicted[n], device=device)
            if n < len(candidates):
                cache.crop(n - len(candidates))  # negative: drop the rejected positions
        start = len(tokens)
        tokens.extend(new)
        accepted.append(len(new))
        timer.mark()
        end = stop.end(tokens, start)
    accepted[-1] -= len(tokens) - end
    return LoopResult(tokens[:end], accepted)


def _pick(logits: torch.Tensor, sampler: Sampler | None) -> torch.Tensor:
    if sampler is None:
        return logits.argmax(-1)
    return sampler.sample(sampler.probs(logits))
