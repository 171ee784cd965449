"""A reduced draft vocabulary: the drafter proposes only the N tokens its training data used most (FR-Spec, Zhao et
al. 2025; EAGLE-3's `d2t` map), so each draft node's LM-head product reads N rows instead of the whole vocabulary.

On a 151,936-token vocabulary (Qwen2.5) the LM head is most of an EAGLE draft step and all of a Medusa head, so on a
CPU this is where the drafter's time goes. Verification is untouched (the target's full LM head), so greedy decoding
stays token-for-token equal to AR; a token outside the subset is simply never drafted. Under sampling the draft
distribution is the softmax over the subset, which the exact verification scheme accepts like any other draft.

The counts come from `distill.jsonl` in the drafter's folder (`bench train` writes it: the training prompts and the
target's answers), so the subset is fixed by the training data and never by evaluation samples. Ties (unseen tokens)
go to the lower id. An option of the methods that use it (`draft_vocab`), recorded with the run; off by default,
as in the EAGLE-1/2 and Medusa references.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import BenchError
from core.files import read_jsonl

COUNTS_FILE = "distill.jsonl"
HELP = (
    "draft only the N tokens most frequent in the drafter's training data (its folder's distill.jsonl; FR-Spec / "
    "EAGLE-3's reduced draft vocabulary): a cheaper LM head per draft node; lossless (default: the whole vocabulary)"
)


def frequent_tokens(folder: Path, n: int, vocab: int) -> torch.Tensor:
    """The ids of the `n` most frequent tokens of the prompts and answers in `folder`/distill.jsonl, ascending."""
    path = folder / COUNTS_FILE
    if not path.is_file():
        raise BenchError(f"draft_vocab needs token counts: {path} is missing (bench train writes it)")
    counts = torch.zeros(vocab, dtype=torch.long)
    try:
        for record in read_jsonl(path, ()):
            ids = torch.tensor(record["prompt"] + record["answer"], dtype=torch.long)
            counts += torch.bincount(ids, minlength=vocab)[:vocab]
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise BenchError(f"draft_vocab: {path} is not a bench train distill file ({error})") from None
    order = torch.sort(-counts, stable=True).indices  # by count, ties to the lower id
    return order[: min(n, vocab)].sort().values


class SubsetHead(nn.Module):
    """An LM head over a subset of the vocabulary: logits of the subset's tokens, -inf for every other token."""

    def __init__(self, head: nn.Linear, ids: torch.Tensor) -> None:
        super().__init__()
        self.vocab = head.weight.shape[0]
        self.register_buffer("ids", ids.to(head.weight.device))
        self.register_buffer("weight", head.weight.detach()[self.ids].contiguous())
        self.register_buffer("bias", None if head.bias is None else head.bias.detach()[self.ids].contiguous())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        subset = nn.functional.linear(hidden, self.weight, self.bias)
        logits = subset.new_full((*subset.shape[:-1], self.vocab), float("-inf"))
        logits[..., self.ids] = subset
        return logits
