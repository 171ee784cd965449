"""LLM-to-SLM bridging when the two models' tokenizers differ (`bridge`; see `methods.llm2slm`).

`adapter` (the first design, and what a checkpoint without a recorded bridge used): the SLM reads the prompt at
the LLM's token positions, through the LLM's input embeddings and a trained linear adapter. `aligned` (the paper's
design, the default for new training runs): the SLM reads the prompt in its own tokens and embeddings, and each of
its tokens gets the mean projection of the LLM tokens whose characters it overlaps (none: its own embedding only),
so with a zero projector the SLM behaves exactly as on its own.

The shared text: the prompt arrives as the LLM's token ids (in the LLM's chat template), so the text both models
read is the one those ids decode to. The SLM reads the LLM's prompt format, not its own chat template (the two
formats would share only the user text, which the ids no longer mark). The LLM's special tokens that the SLM's
tokenizer does not have (a BOS such as `<s>`, a turn end such as `</s>`) are left out of the SLM's text: to the
SLM they would be stray characters. Special tokens both have (ChatML's `<|im_start|>`) stay, and the SLM reads
them as its own. The SLM's tokenizer adds its own special tokens (its BOS) unless the text already starts with it.
Training and inference build the SLM's input the same way (`LLM2SLM.prompt_embeds`); at inference the
re-tokenization and alignment run after the LLM's encoding, inside the SLM's first-token time.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import torch

from core.errors import BenchError
from core.models import LoadedModel

BRIDGES = ("adapter", "aligned")
LEGACY_BRIDGE = "adapter"  # a checkpoint that records no bridge was trained before `aligned` existed

Span = tuple[int, int]


def check_fast(*tokenizers: Any) -> None:
    """Refuse a tokenizer without character offsets (the alignment needs a fast tokenizer)."""
    for tokenizer in tokenizers:
        if not getattr(tokenizer, "is_fast", False):
            name = type(tokenizer).__name__
            raise BenchError(f"--bridge aligned needs fast tokenizers (offset mappings); {name} is not one")


def trimmed(text: str, span: Span) -> Span:
    """A span without its leading whitespace (byte-level BPE offsets include a token's leading space); a span of
    whitespace only is kept whole."""
    start, end = span
    content = text[start:end]
    lead = len(content) - len(content.lstrip())
    return (start + lead, end) if lead < len(content) else span


def overlaps(a: Sequence[Span], b: Sequence[Span]) -> tuple[torch.Tensor, torch.Tensor]:
    """The index pairs (i, j) of the spans of `a` and `b` that share a character, by row. An empty span shares
    none; the others of `b` must be in text order (starts and ends non-decreasing, as tokenizers give them), so
    each span of `a` overlaps a run of them: linear in the spans, not their product."""
    keep = torch.tensor([j for j, (start, end) in enumerate(b) if end > start], dtype=torch.long)
    starts, ends = (torch.tensor([b[j][k] for j in keep.tolist()], dtype=torch.long) for k in (0, 1))
    if bool((starts.diff() < 0).any() or (ends.diff() < 0).any()):
        raise BenchError("token offsets are not in text order; cannot align the two tokenizations")
    a_starts, a_ends = (torch.tensor([span[k] for span in a], dtype=torch.long) for k in (0, 1))
    first = torch.searchsorted(ends, a_starts, right=True)  # the first span ending after a's start
    stop = torch.searchsorted(starts, a_ends)  # the first span starting at or after a's end
    counts = torch.where(a_ends > a_starts, stop - first, 0).clamp(min=0)
    rows = torch.repeat_interleave(torch.arange(len(a)), counts)
    within = torch.arange(len(rows)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    return rows, keep[first[rows] + within]


def align(text: str, slm_offsets: Sequence[Span], llm_offsets: Sequence[Span]) -> torch.Tensor:
    """The averaging matrix (n_slm, n_llm, sparse) of two tokenizations of `text`: row i weighs equally the LLM
    tokens whose characters overlap SLM token i (rows sum to 1, or to 0 where none does). Overlap is judged on
    the tokens' spans without leading whitespace, and on their whole spans for a token that only overlaps there
    (a whitespace token). Special tokens a tokenizer adds (offset (0, 0)) overlap nothing."""
    slm, llm = [tuple(s) for s in slm_offsets], [tuple(s) for s in llm_offsets]
    rows, cols = overlaps([trimmed(text, s) for s in slm], [trimmed(text, s) for s in llm])
    whole_rows, whole_cols = overlaps(slm, llm)
    fallback = ~torch.isin(whole_rows, rows)  # rows that overlap only on whitespace
    rows, cols = torch.cat([rows, whole_rows[fallback]]), torch.cat([cols, whole_cols[fallback]])
    counts = torch.bincount(rows, minlength=len(slm)).float()
    weights = 1 / counts[rows]
    size = (len(slm), len(llm))
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, size, check_invariants=True).coalesce()


def special_ids(tokenizer: Any) -> set[int]:
    """The ids of a tokenizer's special tokens: the named ones and the added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}


def token_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[Span]]:
    """The text token ids decode to (special tokens as their text) and each token's character span in it: the
    offsets of encoding the text again when that gives the same ids (the usual case, linear), else the growth of
    the decoded prefixes (exact for any ids, but quadratic in their number)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == list(ids):
        return text, [tuple(s) for s in encoded["offset_mapping"]]
    lengths = (len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
               for i in range(len(ids)))  # fmt: skip
    ends = [min(n, len(text)) for n in accumulate(lengths, max)]  # a split character may shorten a prefix
    return text, list(zip([0, *ends[:-1]], ends, strict=True))


def shared_text(llm_tokenizer: Any, slm_tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[Span]]:
    """The prompt text the SLM reads and the LLM tokens' spans in it: the text of the LLM's ids without the LLM's
    special tokens that the SLM's tokenizer lacks (their span is empty)."""
    text, spans = token_spans(llm_tokenizer, ids)
    known = slm_tokenizer.get_added_vocab()
    drop = {i for i in special_ids(llm_tokenizer) if llm_tokenizer.convert_ids_to_tokens(i) not in known}
    pieces, out, cut, removed = [], [], 0, 0
    for token, (start, end) in zip(ids, spans, strict=True):
        if token in drop:
            pieces.append(text[cut:start])
            cut, removed = end, removed + end - start
            out.append((0, 0))
        else:
            out.append((start - removed, end - removed))
    return "".join(pieces) + text[cut:], out


def align_prompt(llm_tokenizer: Any, slm_tokenizer: Any, ids: Sequence[int]) -> tuple[list[int], torch.Tensor]:
    """The SLM's token ids of the prompt whose LLM ids are `ids`, and the averaging matrix (n_slm, n_llm) from
    the LLM's tokens to them (`align`)."""
    text, llm_spans = shared_text(llm_tokenizer, slm_tokenizer, ids)
    bos = getattr(slm_tokenizer, "bos_token", None)
    special = not (bos and text.startswith(bos))
    encoded = slm_tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(encoded["input_ids"]), align(text, encoded["offset_mapping"], llm_spans)


def aligned_embeds(embed: torch.nn.Module, own_ids: list[int], weights: torch.Tensor, projected: torch.Tensor,
                   mode: str) -> torch.Tensor:  # fmt: skip
    """The SLM's input in its own tokens (n_slm, d_slm): its embeddings plus (`add`) or, where some LLM token
    covers it, replaced by (`replace`) the mean projected LLM features of its characters (`weights`: `align`)."""
    own = embed(torch.tensor(own_ids, device=projected.device))
    rows, cols = weights.indices().to(projected.device)
    scale = weights.values().to(projected)[:, None]
    mixed = torch.zeros_like(own).index_add(0, rows, projected[cols] * scale)
    if mode == "add":
        return own + mixed
    covered = torch.zeros(len(own), dtype=torch.bool, device=own.device).index_fill(0, rows, True)
    return torch.where(covered[:, None], mixed, own)


@torch.no_grad()
def fit_adapter(adapter: torch.nn.Linear, llm: LoadedModel, slm: LoadedModel) -> None:
    """Start the adapter as the least-squares map from the LLM's to the SLM's input embeddings of the tokens both
    vocabularies share, so the SLM reads the prompt from the first step (a random adapter feeds it noise). With
    fewer shared tokens than embedding dimensions the random initialisation stays."""
    a, b = llm.tokenizer.get_vocab(), slm.tokenizer.get_vocab()
    x_table, y_table = llm.model.get_input_embeddings().weight, slm.model.get_input_embeddings().weight
    shared = sorted(t for t in a.keys() & b.keys() if a[t] < len(x_table) and b[t] < len(y_table))
    if len(shared) <= adapter.in_features:
        return
    x = x_table[[a[t] for t in shared]].float()
    y = y_table[[b[t] for t in shared]].float()
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1), y).solution
    adapter.weight.copy_(solution[:-1].T)
    adapter.bias.copy_(solution[-1])
