"""SuffixDecoding: the suffix tree's counts and drafts against a brute-force count model, the two trees (per-prompt
and global), and the method: lossless against `ar`, the target's distribution under sampling."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from core.errors import BenchError
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Sampler, StopRule
from methods.suffix import SuffixDrafter, SuffixOptions
from methods.suffix_tree import SuffixTree
from tests.conftest import make_model
from tests.test_methods import PROMPTS, VOCAB, assert_equals_ar, chi_square_rejects, empirical, exact_distribution

ARGS = (16, 1.0, 0.0, 0.1)  # max_spec_tokens, max_spec_factor, max_spec_offset, min_token_prob (the defaults)


def occurrences(seqs: list[list[int]], depth: int) -> Counter:
    """How often each string of at most `depth` tokens occurs in the sequences: what the tree's counts must be."""
    return Counter(tuple(s[i:j]) for s in seqs for i in range(len(s)) for j in range(i + 1, min(len(s), i + depth) + 1))


def brute_score(seqs, depth, context, limit_max, factor, offset, min_prob, tree) -> float:
    """The reference's speculate score from the counts alone: for each match length L, the path (greedy) or the
    best `limit` strings (tree) after the matched suffix w, each scored count(w u) / count(w)."""
    count, best = occurrences(seqs, depth), 0.0
    context = context[-depth:]
    for length in range(1, len(context)):
        w = tuple(context[-length:])
        if not count[w]:
            break
        limit = max(0, min(limit_max, int(length * factor + offset + 1e-6)))
        after = [(n / count[w], k) for k, n in count.items() if len(k) > length and k[:length] == w]
        if tree:
            probs = sorted((p for p, _ in after if p >= min_prob), reverse=True)[:limit]
        else:
            probs, path = [], w
            while len(probs) < limit:
                nxt = [(p, k) for p, k in after if len(k) == len(path) + 1 and k[:-1] == path]
                if not nxt or max(nxt)[0] < min_prob:
                    break
                p, path = max(nxt)
                if sum(q == p for q, _ in nxt) > 1:
                    return float("nan")  # tied children: the pick (and the score after it) is implementation order
                probs.append(p)
        best = max(best, sum(probs))
    return best


def test_counts_and_matches_equal_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        depth, alphabet = rng.choice([2, 3, 5, 64]), rng.choice([2, 3, 5])
        tree, seqs = SuffixTree(depth), {}
        for _ in range(rng.randint(1, 10)):
            seq_id, tokens = rng.randint(0, 2), [rng.randrange(alphabet) for _ in range(rng.randint(0, 8))]
            tree.extend(seq_id, tokens)
            seqs.setdefault(seq_id, []).extend(tokens)
        count = occurrences(list(seqs.values()), depth)
        assert tree.count[0] == sum(map(len, seqs.values()))
        for string, n in count.items():
            node, _ = tree.walk(list(string))
            assert tree.count[node] == n
        stack = [(0, 0)]
        while stack:  # path compression: a node's tokens share its count, so a child is seen less often
            node, depth_above = stack.pop()
            for child in tree.children[node].values():
                assert tree.parent[child] == node and depth_above + tree.length[child] <= depth
                assert node == 0 or tree.count[child] < tree.count[node]
                stack.append((child, depth_above + tree.length[child]))
        context = [rng.randrange(alphabet) for _ in range(rng.randint(0, 4))] + seqs.get(0, [])
        for own, ctx in ((0, context), (None, [rng.randrange(alphabet) for _ in range(rng.randint(1, 9))])):
            args = (rng.choice([1, 3, 64]), rng.choice([0.5, 1.0, 2.0]), rng.choice([0.0, 1.0]), rng.choice([0, 0.3]))
            for use_tree in (False, True):
                want = brute_score(list(seqs.values()), depth, ctx, *args, use_tree)
                got = tree.speculate(ctx, *args, use_tree, own=own) if ctx else None
                if got is not None and want == want:  # nan: tied children
                    assert got.score == pytest.approx(want), (seqs, ctx, args, use_tree)


def test_longest_suffix_match_and_most_frequent_continuation():
    tree = SuffixTree(64)
    tree.extend(0, [1, 2, 3, 1, 2, 3, 1, 2, 4, 9])
    assert [tree.count[node] for node, _ in tree.matches([7, 8, 1, 2])] == [3, 3]  # "2", "1 2"; "8 1 2" is not there
    assert len(tree.matches([7, 3, 1, 2])) == 3  # "3 1 2" is
    draft = tree.speculate([7, 8, 1, 2], *ARGS, use_tree_spec=False)
    assert draft.tokens == [3, 1] and draft.probs == pytest.approx([2 / 3, 2 / 3]) and draft.match_len == 2
    assert tree.speculate([5, 3, 1, 2, 4], *ARGS, use_tree_spec=False).match_len == 4  # equal scores: the longest
    tree = SuffixTree(64)
    tree.extend(0, [1, 2, 3, 5, 1, 2, 3, 6, 1, 2, 4, 7, 1, 2, 4, 8, 1, 2, 3, 9])
    path = tree.speculate([0, 1, 2], *ARGS, use_tree_spec=False)
    assert path.tokens == [3, 5] and path.probs == pytest.approx([0.6, 0.2])
    branching = tree.speculate([0, 1, 2], *ARGS, use_tree_spec=True)
    assert branching.tokens == [3, 4] and branching.parents == [-1, -1] and branching.score == pytest.approx(1.0)


def test_draft_length_follows_match_length_and_depth_cap():
    tokens = list(range(20)) * 3
    tree = SuffixTree(64)
    tree.extend(0, tokens)
    for length in (1, 3, 7):  # 99 is not in the tree: the match is `length` long
        draft = tree.speculate([99, *range(20 - length, 20)], 64, 1.0, 0.0, 0.1, False)
        assert draft.tokens == list(range(length)) and draft.match_len == length
    assert len(tree.speculate([99, *range(12, 20)], 64, 2.0, 1.0, 0.1, False).tokens) == 17  # 2 * 8 + 1
    assert len(tree.speculate([99, *range(12, 20)], 5, 2.0, 1.0, 0.1, False).tokens) == 5  # max_spec_tokens
    assert tree.speculate(list(range(12, 20)), 64, 1.0, 0.0, 0.1, False).match_len == 7  # < len(context), as ref
    shallow = SuffixTree(6)
    shallow.extend(0, tokens)
    stack = [(0, 0)]
    while stack:
        node, depth = stack.pop()
        assert depth <= 6
        stack += [(child, depth + shallow.length[child]) for child in shallow.children[node].values()]
    draft = shallow.speculate(list(range(10, 20)), 64, 1.0, 0.0, 0.1, False)
    assert draft.match_len == 3 and draft.tokens == [0, 1, 2]  # match + draft within the depth (6), as in the reference


def test_per_prompt_and_global_trees():
    options = SuffixOptions()
    shared = SuffixTree(options.max_depth)
    first = SuffixDrafter(options, shared, 0)
    prompt = [50, 51, 52, 53]
    assert first.propose(prompt, 10) is None  # nothing repeats yet
    first.finish([60, 61, 62, 63, 64, 65])
    assert shared.seqs[0] == [60, 61, 62, 63, 64, 65]  # the output only, not the prompt
    second = SuffixDrafter(options, shared, 1)
    draft = second.propose([1, 2, 60, 61, 62], 10)  # the earlier output continues the match
    assert draft.tokens == [63, 64, 65]
    assert second.propose([1, 2, 60, 61, 62], 2).tokens == [63, 64]  # within the budget
    alone = SuffixDrafter(SuffixOptions(global_tree=False), None, 0)
    assert alone.propose([1, 2, 60, 61, 62], 10) is None
    assert alone.propose([1, 2, 60, 61, 62, 7, 1, 2], 10).tokens == [60, 61]  # the prompt tree has its output too


@pytest.fixture(scope="module")
def repetitive(tiny):
    return tiny.tokenizer(PROMPTS[0])["input_ids"]


SETTINGS = [{}, {"use_tree_spec": True}, {"use_tree_spec": True, "min_token_prob": 0.0, "max_spec_tokens": 5},
            {"max_depth": 4, "max_spec_factor": 2.0, "max_spec_offset": 1.0}]  # fmt: skip


@pytest.mark.parametrize("options", SETTINGS, ids=["path", "tree", "wide-tree", "shallow"])
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_lossless_equals_ar(tiny, options, max_new):
    method = METHODS.get("suffix").create(tiny, None, options)  # one instance: the global tree grows across prompts
    assert_equals_ar(method, tiny, PROMPTS + PROMPTS[:1], max_new, f"suffix {options}")


def test_eos_inside_accepted_block(tiny, repetitive):
    free = Autoregressive(tiny, None).generate(repetitive, StopRule(40), Timer()).tokens
    stop = StopRule(40, frozenset({free[12]}))
    for options in ({}, {"use_tree_spec": True}):
        method = METHODS.get("suffix").create(tiny, None, options)
        method.generate(repetitive, StopRule(40), Timer())  # the global tree holds the text past the EOS
        got = method.generate(repetitive, stop, Timer())
        assert got.tokens == free[: free.index(free[12]) + 1] and sum(got.accepted) == len(got.tokens)


def test_repetition_commits_several_tokens_per_forward_and_the_global_tree_persists(tiny, repetitive):
    method = METHODS.get("suffix").create(tiny, None, {})
    first = method.generate(repetitive, StopRule(40), Timer())
    assert len(first.tokens) / first.target_forwards > 1  # tau > 1 from the prompt and the output
    second = method.generate(repetitive, StopRule(40), Timer())
    assert second.tokens == first.tokens and second.target_forwards < first.target_forwards
    assert sum(second.drafted) > sum(first.drafted)
    alone = METHODS.get("suffix").create(tiny, None, {"global_tree": False})
    runs = [alone.generate(repetitive, StopRule(40), Timer()).target_forwards for _ in range(2)]
    assert runs[0] == runs[1] > second.target_forwards


class CountingDrafter(SuffixDrafter):
    drafts: Counter = Counter()

    def propose(self, context, budget):
        draft = super().propose(context, budget)
        if draft is not None:
            self.drafts["tree" if len(draft.paths) > 1 else "chain"] += 1
        return draft


def test_sampling_matches_target_distribution():
    target = make_model(VOCAB, seed=3, layers=1, eos=None)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.3)  # an uncertain target: drafts are often rejected
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3, 1, 2, 4, 1, 2], 3, 3000
    options = SuffixOptions(use_tree_spec=True, min_token_prob=0.0)  # trees where the text branches, chains elsewhere
    shared, ids = SuffixTree(options.max_depth), iter(range(n))
    CountingDrafter.drafts = Counter()
    got = empirical(lambda: CountingDrafter(options, shared, next(ids)), target, prompt, steps, sampler, n)
    assert not chi_square_rejects(got, exact_distribution(target, prompt, steps, sampler), n)
    assert CountingDrafter.drafts.total() > n  # drafts were verified (a draft-free run would pass too)
    assert CountingDrafter.drafts["tree"] > n / 2 and CountingDrafter.drafts["chain"] > n / 10


def test_options_and_bad_values(tiny):
    method = METHODS.get("suffix").create(tiny, None, {"max_spec_tokens": 5})
    assert method.max_step_tokens() == 6
    assert "Oliaro et al. 2024" in method.description
    for options, message in [({"max_depth": 1}, "--max-depth must be at least 2"),
                             ({"max_spec_tokens": 0}, "--max-spec-tokens must be at least 1"),
                             ({"max_spec_factor": -1.0}, "--max-spec-factor must be at least 0"),
                             ({"min_token_prob": 1.5}, "--min-token-prob must be at most 1"),
                             ({"use_tree_spec": "yes"}, "--use-tree-spec must be bool"),
                             ({"window": 3}, "does not take --window")]:  # fmt: skip
        with pytest.raises(BenchError, match=message):
            METHODS.get("suffix").create(tiny, None, options)
