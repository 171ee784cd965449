"""`rest` (He et al. 2023, "REST: Retrieval-Based Speculative Decoding").

The drafts come from a datastore of token sequences (`bench datastore build`): a corpus tokenized with the
target's tokenizer, concatenated into one token stream, and its suffix array. As in the reference
(FasterDecoding/REST, `rest/model/utils.py` `generate_candidates_and_draft_buffer` and DraftRetriever's
`Reader.search`, also Spec-Bench's copy), every step:

- takes the context's last `max_token_span` tokens (the pending token last) as the query, then shorter suffixes
  down to 2 tokens (`token_spans = [16, 15, ..., 2]`), until one occurs in the datastore;
- reads at most `matches` occurrences (`k` = 5000, in suffix-array order) and the `continuation` tokens after each
  (`long` = 10);
- counts every prefix of those continuations (a trie of them, each node weighted by the continuations through it),
  keeps the `num_draft` heaviest nodes (`choices`), then drops the nodes with the most distinct tokens on their path
  until the sum of those counts is at most `num_draft` (DraftRetriever's `cut_to_choices`);
- verifies the remaining trie as one token tree (`Draft.tree`) in one target forward.

Where the reference is not deterministic or has no defined result, this one is: equal weights rank shallower nodes
first, then in suffix-array order (the reference takes them in hash-map order), and `cut_to_choices` drops, among
paths with as many distinct tokens, the lighter first. A query whose matches all end the datastore (no continuation)
moves on to the next shorter span (the reference's Rust code panics there). No match at all is an autoregressive
step (the reference then drafts a placeholder token, id 100). The suffix array is pydivsufsort's (the PyPI package
named `draftretriever` is a different retriever, ADED's tri-gram matrix, not REST's suffix array index).
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import BenchError
from core.files import file_sha256, portable
from core.models import LoadedModel
from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.decode import Draft, Drafter, Sampler

FORMAT = "decodebench-rest-datastore/1"
MANIFEST = "datastore.json"
TOKENS = "tokens.npy"  # the token stream, uint32
SUFFIXES = "suffix_array.npy"  # its suffix array, int32 (int64 past 2**31 tokens)
BUILD_HINT = "bench datastore build --model MODEL --from FILE... --out DIR"
PAPER = "the paper's GPU setting: num_draft 64, max_token_span 16, continuation 10, matches 5000"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, added tokens included): equal means same token ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def trie(rows: np.ndarray, choices: int, max_depth: int) -> tuple[list[int], list[int]]:
    """The reference's draft trie from continuations `rows` (n x L, in suffix-array order, so equal prefixes are
    adjacent; -1 past the datastore's end): (tokens, parents), parents before children, at most `choices` nodes,
    then cut to `max_depth` levels (the engine's budget)."""
    n, length = rows.shape
    change = np.ones((n, length), dtype=bool)
    change[1:] = rows[1:] != rows[:-1]
    starts = np.logical_or.accumulate(change, axis=1)  # row r opens a new prefix group at depth j
    depth, first = np.nonzero(starts.T)  # one node per group, by depth then row
    nxt = np.append(first[1:], n)
    count = np.where(np.append(depth[1:], -1) == depth, nxt, n) - first
    groups = np.cumsum(starts, axis=0) - 1  # a row's group index at each depth
    offset = np.concatenate(([0], np.cumsum(starts.sum(axis=0))))
    parent = np.where(depth > 0, offset[np.maximum(depth - 1, 0)] + groups[first, np.maximum(depth - 1, 0)], -1)
    token = rows[first, depth]
    valid = np.flatnonzero(token >= 0)
    ranked = valid[np.lexsort((first[valid], depth[valid], -count[valid]))][:choices]
    rank = {int(node): i for i, node in enumerate(ranked)}
    distinct = {node: len(set(rows[first[node], : depth[node] + 1].tolist())) for node in rank}
    total = sum(distinct.values())
    for node in sorted(rank, key=lambda v: (-distinct[v], -rank[v])):  # cut_to_choices
        if total <= choices:
            break
        total -= distinct.pop(node)
    kept = sorted((v for v in distinct if depth[v] < max_depth), key=lambda v: (depth[v], rank[v]))
    index = {node: i for i, node in enumerate(kept)}
    return [int(token[v]) for v in kept], [index[int(parent[v])] if parent[v] >= 0 else -1 for v in kept]


class Datastore:
    """A built datastore folder: its record, the token stream as big-endian bytes (byte order = token order, so
    suffixes compare as bytes) and the suffix array."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise BenchError(f"{folder} is not a REST datastore (no {MANIFEST}); build one: {BUILD_HINT}")
        try:
            self.record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise BenchError(f"{path}: not valid JSON; rebuild the datastore: {BUILD_HINT}") from None
        if self.record.get("format") != FORMAT:
            raise BenchError(f"{path}: format {self.record.get('format')!r}, expected {FORMAT!r}; rebuild it")
        for name, digest in self.record["files"].items():
            if not (self.folder / name).is_file() or file_sha256(self.folder / name) != digest:
                raise BenchError(f"datastore {folder}: {name} is missing or changed since it was built; rebuild it")
        tokens = np.load(self.folder / TOKENS)
        self.size = len(tokens)
        self.bytes = tokens.astype(">u4").tobytes()
        self.tokens = np.frombuffer(self.bytes, dtype=">u4")
        self.suffixes = np.load(self.folder / SUFFIXES)

    def check_tokenizer(self, tokenizer: Any, spec: str) -> None:
        """Refuse a target whose tokenizer is not the one the datastore was tokenized with."""
        built = self.record["tokenizer"]
        if built["vocab_size"] != len(tokenizer) or built["sha256"] != tokenizer_fingerprint(tokenizer):
            raise BenchError(
                f"datastore {self.folder} was built with the tokenizer of {self.record['model']!r} "
                f"(vocab {built['vocab_size']}), not that of {spec!r} (vocab {len(tokenizer)}); "
                f"rebuild it with --model {spec}"
            )

    def continuations(self, query: list[int], matches: int, length: int) -> np.ndarray | None:
        """The `length` tokens after each of the first `matches` occurrences of `query` (suffix-array order; -1
        past the end), or None when it does not occur."""
        key = np.asarray(query, dtype=">u4").tobytes()
        width = len(key)
        data, suffixes = self.bytes, self.suffixes

        def at(i: int) -> bytes:
            start = 4 * int(suffixes[i])
            return data[start : start + width]

        lo = bisect_left(range(len(suffixes)), key, key=at)
        hi = bisect_right(range(lo, min(lo + matches, len(suffixes))), key, key=at) + lo
        if hi == lo:
            return None
        positions = suffixes[lo:hi].astype(np.int64)[:, None] + len(query) + np.arange(length)
        return np.where(positions < self.size, self.tokens[np.minimum(positions, self.size - 1)].astype(np.int64), -1)

    def manifest(self) -> dict[str, Any]:
        """What a run records about the datastore: where it is, its content hash, sources, size and builder."""
        keep = ("model", "tokenizer", "sources", "tokens", "files", "builder")
        return {"path": portable(self.folder), "sha256": self.record["files"][TOKENS]} | {
            k: self.record[k] for k in keep if k in self.record
        }


class RestDrafter:
    """Retrieves continuations of the context's longest matching suffix and proposes their trie."""

    draft_forwards = 0

    def __init__(self, store: Datastore, num_draft: int, max_token_span: int, continuation: int, matches: int) -> None:
        self.store = store
        self.num_draft, self.max_token_span = num_draft, max_token_span
        self.continuation, self.matches = continuation, matches

    def propose(self, context: list[int], budget: int) -> Draft | None:
        longest = min(self.max_token_span, len(context))
        for span in range(longest, min(2, longest) - 1, -1):
            rows = self.store.continuations(context[-span:], self.matches, self.continuation)
            if rows is not None and (rows[:, 0] >= 0).any():
                return Draft.tree(*trie(rows, self.num_draft, budget))
        return None

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        pass


@dataclass(frozen=True)
class RestOptions(Options):
    datastore: str | None = option(None, f"a REST datastore folder ({BUILD_HINT})")
    num_draft: int = option(
        16,
        f"REST: most draft tokens per step, the trie's node limit (the reference's choices; CPU-sized; {PAPER})",
        min=1,
        label="draft",
    )
    max_token_span: int = option(
        16, "longest context suffix looked up, then shorter ones down to 2 (token_spans)", min=1, label="span"
    )
    continuation: int = option(10, "tokens read after each match (DraftRetriever's `long`)", min=1)
    matches: int = option(5000, "most matches read per lookup (DraftRetriever's `k`)", min=1)

    def check(self, owner: str) -> None:
        if self.datastore is None:
            raise BenchError(f"method {owner} needs --datastore DIR; build one: {BUILD_HINT}")


@register
class Rest(DraftingMethod):
    name = "rest"
    description = (
        "REST (He et al. 2023, Retrieval-Based Speculative Decoding): suffix match in a datastore, "
        "trie of retrieved continuations verified as a tree (--datastore)"
    )
    Options = RestOptions

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: RestOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        if self.options.datastore is None:
            raise BenchError(f"method rest needs --datastore DIR; build one: {BUILD_HINT}")
        self.store = Datastore(self.options.datastore)
        self.store.check_tokenizer(target.tokenizer, str(target.artifact.get("spec", "the model")))

    def max_step_tokens(self) -> int:
        return 1 + self.options.num_draft

    def manifest(self) -> dict[str, Any]:
        """The datastore this run drafts from (source files and their sha256, token count, builder)."""
        return {"datastore": self.store.manifest()}

    def drafter(self) -> Drafter:
        o = self.options
        return RestDrafter(self.store, o.num_draft, o.max_token_span, o.continuation, o.matches)
