"""The suffix tree of SuffixDecoding (Oliaro et al. 2024), ported from the reference's C++ `SuffixTree`
(snowflakedb/ArcticInference, `csrc/suffix_decoding/suffix_tree.cc`).

The tree holds every suffix of its sequences, each cut at `max_depth` tokens, path-compressed: a node is a run of
tokens (a slice of one sequence) that every suffix through it shares, with `count` = the suffixes that pass
through or end at it, i.e. how often its path's string occurs in the sequences. `extend` appends tokens to a
sequence incrementally: each sequence keeps its active suffixes (the last `max_depth` start positions), each ending
at the end of a node, and every append advances them with the reference's cases (extend a leaf, add a child, fuse,
shift a boundary, move into a child, split a child). `speculate` matches the context's suffixes and drafts from
the counts (see `SuffixTree.speculate`).

Nodes are integer ids into parallel lists (count, length, sequence, start, parent, children as {token: id}), so a
tree of any size adds no object the garbage collector tracks: per-node objects would trigger its collections
inside timed steps, and a full one takes about 0.3 s on our CPUs with smollm2-135m loaded.

Differences from the reference: siblings are not kept in a count-ordered linked list; a draft reads the children's
counts (ties: the child created first; the reference's order among equal counts depends on update history), and
a token's probability is its node's count over the matched string's, the exact value of the reference's product
of float32 count ratios down the path. Sequences are never removed (the reference's
`max_cached_requests=-1`, no eviction).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

ROOT = 0


@dataclass
class SuffixDraft:
    """Draft tokens with their parents (-1: under the pending token), estimated probabilities and score (their sum),
    and the length of the context suffix it was matched on."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    score: float = 0.0
    match_len: int = 0


class SuffixTree:
    """A count-annotated suffix tree over several token sequences (ids chosen by the caller), depth-capped. Node
    `i` is the run of `length[i]` tokens `seq[i][start[i]:start[i] + length[i]]` under `parent[i]`, seen
    `count[i]` times; `children[i]` maps a first token to a child. Node 0 is the root."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.count, self.length, self.start, self.parent = [0], [0], [0], [-1]
        self.seq: list[list[int]] = [[]]
        self.children: list[dict[int, int]] = [{}]
        self.seqs: dict[int, list[int]] = {}
        self.active: dict[int, list[int]] = {}  # per sequence: the nodes its active suffixes end at, longest first

    def _node(self, count: int, seq: list[int], start: int, parent: int) -> int:
        """A new node of one token, `seq[start]`."""
        self.count.append(count)
        self.length.append(1)
        self.seq.append(seq)
        self.start.append(start)
        self.parent.append(parent)
        self.children.append({})
        return len(self.count) - 1

    def extend(self, seq_id: int, tokens: list[int]) -> None:
        """Append `tokens` to sequence `seq_id` (a new one if unknown)."""
        seq = self.seqs.setdefault(seq_id, [])
        active = self.active.setdefault(seq_id, [])
        for token in tokens:
            self._append(seq, active, token)

    def _append(self, seq: list[int], active: list[int], token: int) -> None:
        count, length, start, children = self.count, self.length, self.start, self.children
        active.append(ROOT)  # the suffix starting at the new token
        count[ROOT] += 1
        if len(active) > self.max_depth:
            del active[0]  # the oldest suffix reached max_depth: it stops growing
        seq.append(token)
        n = len(seq)
        # Case 1a (a leaf only this suffix reaches: extend it) for the longest suffixes, which are exactly the ones
        # seen once (a longer string occurs at most as often as its suffix), so one pass finds them.
        leaves = 0
        for node in active:
            if count[node] != 1 or node == ROOT:
                break
            length[node] += 1
            leaves += 1
        for i in range(leaves, len(active)):
            node = active[i]
            child = children[node].get(token)
            if child is None:
                if count[node] == 1 and node != ROOT:  # 1a
                    length[node] += 1
                else:  # 1b: branch off a new leaf
                    children[node][token] = active[i] = self._node(1, seq, n - 1, node)
            elif count[node] == count[child] + 1 and node != ROOT:
                # Case 2: every other suffix through this node continues into `child`.
                if length[child] == 1:  # 2a: fuse the node into its child (the node's id is dropped)
                    parent = self.parent[node]
                    count[child] += 1
                    length[child] = length[node] + 1
                    self.seq[child], start[child], self.parent[child] = seq, n - length[child], parent
                    children[parent][seq[start[child]]] = child  # same key, same place among the siblings
                    active[i] = child
                else:  # 2b: move the boundary between the node and its child one token down
                    length[node] += 1
                    self.seq[node], start[node] = seq, n - length[node]
                    length[child] -= 1
                    start[child] += 1
                    children[node] = {self.seq[child][start[child]]: child}
            elif length[child] == 1:  # 3a: move into the child
                count[child] += 1
                active[i] = child
            else:  # 3b: split the child after its first token
                new = children[node][token] = active[i] = self._node(count[child] + 1, seq, n - 1, node)
                length[child] -= 1
                start[child] += 1
                self.parent[child] = new
                children[new][self.seq[child][start[child]]] = child

    def walk(self, tokens: list[int]) -> tuple[int, int] | None:
        """Where `tokens` ends, read from the root: (node, tokens of it matched); None: not in the tree."""
        node, idx, i, n = ROOT, 0, 0, len(tokens)
        while i < n:
            if idx == self.length[node]:
                child = self.children[node].get(tokens[i])
                if child is None:
                    return None
                node, idx = child, 0
            k = min(self.length[node] - idx, n - i)
            s = self.start[node] + idx
            if self.seq[node][s : s + k] != tokens[i : i + k]:
                return None
            i += k
            idx += k
        return node, idx

    def matches(self, context: list[int], own: int | None = None) -> list[tuple[int, int]]:
        """Where each suffix of `context` in the tree ends, for match lengths 1, 2, ... (the longest the tree holds,
        at most max_depth - 1 and len(context) - 1, as the reference). `own`: a sequence `context` ends with (its
        active suffixes are the first matches, without a walk)."""
        longest = min(len(context), self.max_depth) - 1
        found = [(node, self.length[node]) for node in reversed(self.active.get(own, []))][:longest]
        for size in range(len(found) + 1, longest + 1):
            match = self.walk(context[-size:])
            if match is None:  # a longer suffix contains this one: none is in the tree
                break
            found.append(match)
        return found

    def speculate(self, context: list[int], max_spec_tokens: int, max_spec_factor: float, max_spec_offset: float,
                  min_token_prob: float, use_tree_spec: bool, own: int | None = None) -> SuffixDraft:  # fmt: skip
        """The reference's `speculate`: for every match length L, a draft of at most
        min(max_spec_tokens, int(L * max_spec_factor + max_spec_offset)) tokens from where the context's suffix of
        length L ends, by frequency (a path: the most frequent child each time; a tree: best-first by estimated
        probability, the product of count ratios down the path), dropping tokens below `min_token_prob`. The draft
        with the highest score (sum of probabilities) wins, ties to the longer match. Lengths are tried longest
        first and stop once no shorter match can score more (same result as the reference's full scan)."""
        best = SuffixDraft()
        draft = self._tree if use_tree_spec else self._path
        found = self.matches(context, own)
        for size in range(len(found), 0, -1):
            limit = max(0, min(max_spec_tokens, int(size * max_spec_factor + max_spec_offset + 1e-6)))
            if best.score >= limit:  # every shorter match has a limit <= this one (max_spec_factor >= 0)
                break
            got = draft(*found[size - 1], limit, min_token_prob)
            if got.score > best.score:
                best = got
                best.match_len = size
        return best

    def _emit(self, out: SuffixDraft, node: int, idx: int, k: int, parent: int, prob: float) -> None:
        """Add node's tokens idx..idx+k-1 to the draft, a chain under `parent`."""
        s = self.start[node] + idx
        first = len(out.tokens)
        out.tokens += self.seq[node][s : s + k]
        out.parents += [parent, *range(first, first + k - 1)]
        out.probs += [prob] * k
        out.score += prob * k

    def _path(self, node: int, idx: int, limit: int, min_token_prob: float) -> SuffixDraft:
        """The reference's `_speculate_path`: follow the most frequent child while the path's probability holds."""
        out = SuffixDraft()
        count, length, children = self.count, self.length, self.children
        prob, base = 1.0, count[node]
        while len(out.tokens) < limit and prob >= min_token_prob:
            if idx < length[node]:
                k = min(length[node] - idx, limit - len(out.tokens))
                self._emit(out, node, idx, k, len(out.tokens) - 1, prob)
                idx += k
            elif children[node]:
                node, idx = max(children[node].values(), key=count.__getitem__), 0
                prob = count[node] / base  # the product of count ratios down the path telescopes
            else:
                break
        return out

    def _tree(self, node: int, idx: int, limit: int, min_token_prob: float) -> SuffixDraft:
        """The reference's `_speculate_tree`: a priority queue of (probability, node, offset, parent); the most
        probable item adds its next token and goes back in, or, at its node's end, queues the node's children.
        Ties go to the item queued first (the reference's heap leaves them unspecified), so an item adds the rest
        of its node at once unless an item as probable waits."""
        out = SuffixDraft()
        count = self.count
        base, order = count[node], 1
        heap = [(-1.0, 0, node, idx, -1)]
        while heap and len(out.tokens) < limit:
            neg, _, node, idx, parent = heapq.heappop(heap)
            if idx < self.length[node]:
                run = self.length[node] - idx if not heap or heap[0][0] > neg else 1
                k = min(run, limit - len(out.tokens))
                self._emit(out, node, idx, k, parent, -neg)
                heapq.heappush(heap, (neg, order, node, idx + k, len(out.tokens) - 1))
                order += 1
                continue
            for child in sorted(self.children[node].values(), key=count.__getitem__, reverse=True):
                p = count[child] / base  # the product of count ratios down the path telescopes
                if p < min_token_prob:
                    break
                heapq.heappush(heap, (-p, order, child, 0, parent))
                order += 1
        return out
