"""`speculative --tree static|dynamic`: lossless against `ar`, the draft's tree equals what a cache-free draft
forward gives, its cache goes back to the committed context, the shapes are the configured ones, sampling keeps
the target's distribution (and the engine's rule is why the children are drawn without replacement), bad options
are refused and the chain default is unchanged."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods import verify
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Draft, Sampler, StopRule
from methods.draft_tree import TreeDrafter, TreeShape
from methods.speculative import DraftModelDrafter, SpeculativeOptions
from tests.conftest import make_model
from tests.test_methods import (
    PROMPTS,
    VOCAB,
    NoTokenizer,
    chi_square_rejects,
    empirical,
    exact_distribution,
    small_pair,  # noqa: F401  (a fixture)
)
from tests.test_sliding import gemma3, mistral

STATIC = {"tree": "static"}
DYNAMIC = {"tree": "dynamic"}
SMALL_DYNAMIC = {"tree": "dynamic", "depth": 3, "children": 3, "frontier": 2, "max_nodes": 7}
SETTINGS = [  # (options, the target as its own draft)
    (STATIC, False),
    ({"tree": "static", "branching": "2,2,2"}, False),
    (DYNAMIC, False),
    (SMALL_DYNAMIC, True),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def draft(tiny) -> LoadedModel:
    """A different random model with the same tokenizer (low acceptance)."""
    return LoadedModel(make_model(len(tiny.tokenizer), seed=1, layers=1), tiny.tokenizer, {"spec": "tiny-draft"})


def spec(tiny, draft, options, sampler=None):
    return METHODS.get("speculative").create(tiny, sampler, options, draft=draft)


def ids_of(tiny, prompt: str = PROMPTS[0]) -> list[int]:
    return tiny.tokenizer(prompt)["input_ids"]


@pytest.mark.parametrize(
    ("options", "self_draft"), SETTINGS, ids=[f"{o['tree']}-{i}" for i, (o, _) in enumerate(SETTINGS)]
)
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_lossless_equals_ar(tiny, draft, options, self_draft, max_new):
    method = spec(tiny, tiny if self_draft else draft, options)
    for prompt in PROMPTS:
        ids = ids_of(tiny, prompt)
        expected = Autoregressive(tiny, None).generate(ids, StopRule(max_new), Timer()).tokens
        got = method.generate(ids, StopRule(max_new), Timer())
        assert got.tokens == expected, f"{options} diverged on {prompt!r}"
        assert sum(got.accepted) == len(got.tokens) == max_new


@pytest.mark.parametrize(
    ("options", "depth"), [(STATIC, 4), ({"tree": "dynamic", "depth": 3, "children": 2, "frontier": 4}, 3)]
)
def test_self_draft_accepts_every_step_to_full_depth(tiny, options, depth):
    """The target as its own draft: the greedy path is in the tree (top-1 children, nothing pruned), so every
    forward commits depth + 1 tokens; one draft forward per level."""
    got = spec(tiny, tiny, options).generate(ids_of(tiny), StopRule(40), Timer())
    assert got.accepted[:-1] == [depth + 1] * (len(got.accepted) - 1)
    assert got.draft_forwards == depth * len(got.accepted)


def parents_of(draft: Draft) -> list[int]:
    """Each node's parent (-1: the pending token), read back from the draft's visibility and positions."""
    depth = draft.positions
    return [next((j for j in range(i) if draft.visible[i, j] and depth[j] == depth[i] - 1), -1)
            for i in range(len(draft.tokens))]  # fmt: skip


def tree_drafter(model: LoadedModel, options: dict, sampler=None) -> TreeDrafter:
    shape = SpeculativeOptions(**options).shape()
    return TreeDrafter(DraftModelDrafter(model, 1, False, sampler), shape, sampler)


@pytest.mark.parametrize(
    ("builder", "branching"),
    [(None, "3,2,2"), ("mistral", "1,1,1,1"), ("gemma3", "1,1,1,1")],
    ids=["llama-tree", "sliding-chain", "hybrid-chain"],
)
def test_children_are_the_cache_free_draft_top_k(tiny, draft, builder, branching):
    """Each node's children are the draft's top-k after context + the node's path, as a cache-free forward gives
    them: level forwards see the context and their ancestors at the right positions (sliding-window and hybrid
    drafts too, with a chain-shaped tree so that a layer's window - 1 cached keys are the context it needs)."""
    model = (
        draft
        if builder is None
        else LoadedModel({"mistral": mistral, "gemma3": gemma3}[builder](len(tiny.tokenizer), 1), tiny.tokenizer, {})
    )
    drafter = tree_drafter(model, {"tree": "static", "branching": branching})
    widths = [int(w) for w in branching.split(",")]
    ids = ids_of(tiny)
    for context in (ids[:10], ids):  # a first step, then one that reuses the cache
        d = drafter.propose(context, 10)
        parents = parents_of(d)
        with torch.inference_mode():
            for node in [-1, *range(len(d.tokens))]:
                kids = [i for i, p in enumerate(parents) if p == node]
                level = d.positions[node] if node >= 0 else 0
                if level == len(widths):
                    assert not kids
                    continue
                path, up = [], node
                while up >= 0:
                    path, up = [d.tokens[up], *path], parents[up]
                logits = model.model(torch.tensor([context + path])).logits[0, -1]
                assert [d.tokens[i] for i in kids] == logits.topk(widths[level]).indices.tolist()


@pytest.mark.parametrize("options", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_draft_cache_back_to_the_committed_context(tiny, draft, options):
    drafter = tree_drafter(draft, options)
    ids = ids_of(tiny)
    with torch.inference_mode():
        for context in (ids[:12], ids):
            drafter.propose(context, 10)
            cache = drafter.chain.cache
            assert cache.get_seq_length() == len(context) and drafter.chain.cached == context
            reference = DraftModelDrafter(draft, 1, False, None)
            reference.sync(context)
            for ours, ref in zip(cache.layers, reference.cache.layers, strict=True):
                torch.testing.assert_close(ours.keys, ref.keys, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(ours.values, ref.values, atol=1e-5, rtol=1e-5)


def test_tree_shapes(tiny, draft):
    ids = ids_of(tiny)
    static = tree_drafter(draft, STATIC)
    d = static.propose(ids, 10)
    assert Counter(d.positions) == {1: 3, 2: 6, 3: 6, 4: 6} and static.draft_forwards == 4
    assert spec(tiny, draft, STATIC).max_step_tokens() == 1 + 21 == 1 + TreeShape("static", (3, 2, 1, 1)).size()
    assert max(d.positions) == 4 and len(static.propose(ids, 2).tokens) == 3 + 6  # the budget cuts levels
    dynamic = tree_drafter(draft, DYNAMIC)
    d = dynamic.propose(ids, 10)
    assert len(d.tokens) == 20 == spec(tiny, draft, DYNAMIC).max_step_tokens() - 1 and dynamic.draft_forwards == 5
    assert Counter(d.positions)[1] == 4 and all(n <= 4 * 4 for n in Counter(d.positions).values())
    for tree in (static.propose(ids, 10), d):
        parents = parents_of(tree)
        assert all(p < i for i, p in enumerate(parents))  # parents before children (a kept node's parent kept)
        assert all(p == -1 or tree.positions[p] == tree.positions[i] - 1 for i, p in enumerate(parents))
        assert tree.paths == sorted(tree.paths) and len(tree.paths) == len(set(range(len(parents))) - set(parents))
    assert TreeShape("dynamic", depth=3, children=3, frontier=2, max_nodes=100).size() == 3 + 6 + 6


def test_dynamic_keeps_the_most_probable_nodes(tiny, draft):
    """EAGLE-2's cut: every kept node's cumulative draft probability is at least every dropped candidate's."""
    drafter = tree_drafter(draft, {"tree": "dynamic", "depth": 3, "children": 3, "frontier": 2, "max_nodes": 6})
    ids = ids_of(tiny)
    d = drafter.propose(ids, 10)
    full = tree_drafter(draft, {"tree": "dynamic", "depth": 3, "children": 3, "frontier": 2, "max_nodes": 100})
    every = full.propose(ids, 10)

    def scores(tree: Draft) -> dict[tuple[int, ...], float]:
        out = {}
        with torch.inference_mode():
            for path in {tuple(p[:n]) for p in tree.paths for n in range(1, len(p) + 1)}:
                toks = [tree.tokens[i] for i in path]
                logp = torch.log_softmax(draft.model(torch.tensor([ids + toks])).logits[0, len(ids) - 1 :], -1)
                out[tuple(toks)] = float(logp[torch.arange(len(toks)), torch.tensor(toks)].sum())
        return out

    kept, candidates = scores(d), scores(every)
    assert len(kept) == 6 and set(kept) <= set(candidates)
    assert min(kept.values()) >= max(v for k, v in candidates.items() if k not in kept) - 1e-4


def test_bad_options_are_refused(tiny, draft):
    cases = [
        ({"tree": "static", "adaptive": True}, "--adaptive sets a chain's length"),
        ({"tree": "dynamic", "budget": "auto"}, "--budget auto sets a chain's length"),
        ({"tree": "static", "num_draft": 3}, "--num-draft sets a chain's length"),
        ({"tree": "static", "branching": "3,x"}, "--branching must be positive integers"),
        ({"tree": "static", "branching": "2,0"}, "--branching must be positive integers"),
        ({"branching": "2,2"}, "--branching applies to --tree static only"),
        ({"tree": "dynamic", "branching": "2,2"}, "--branching applies to --tree static only"),
        ({"tree": "static", "max_nodes": 9}, "--max-nodes applies to --tree dynamic only"),
        ({"depth": 3}, "--depth applies to --tree dynamic only"),
        ({"tree": "dynamic", "children": 0}, "--children must be at least 1"),
        ({"tree": "bushy"}, "--tree must be one of none, static, dynamic"),
    ]
    for options, message in cases:
        with pytest.raises(BenchError, match=message):
            spec(tiny, draft, options)


def test_chain_default_unchanged(tiny, draft):
    method = spec(tiny, draft, {})
    assert method.options.tree == "none" and method.max_step_tokens() == 6
    assert type(method.drafter()) is DraftModelDrafter


# --- sampling: the output distribution is the target's -------------------------------------------------------


class TopK(TreeDrafter):
    """Broken: the draft's top-k children, claimed as draws from q."""

    def _children(self, logits, k):
        q = self.sampler.probs(logits)
        top = q.topk(min(k, VOCAB), dim=-1)
        return top.indices, top.values.log(), torch.ones(top.indices.shape, dtype=torch.bool), q


class OwnScore(TreeDrafter):
    """Broken: EAGLE-2's cut (a node's own cumulative probability) under sampling."""

    def _cut_score(self, tree):
        return tree.cum


@pytest.mark.parametrize(
    ("options", "broken"),
    [
        ({"tree": "static", "branching": "3,2"}, TopK),
        ({"tree": "dynamic", "depth": 3, "children": 3, "frontier": 2, "max_nodes": 5}, OwnScore),
    ],
    ids=["static", "dynamic"],
)
def test_tree_sampling_matches_target_distribution(small_pair, options, broken):  # noqa: F811
    """Children drawn without replacement, each with its recursive row, keep the target's distribution; the
    chi-square test catches top-k children passed off as samples, and the dynamic tree's cut by a node's own
    probability (the pruned tree keeps 5 of up to 15 draft nodes)."""
    target, drafter_model = small_pair
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3], 3, 3000
    exact = exact_distribution(target, prompt, steps, sampler)
    model = LoadedModel(drafter_model, NoTokenizer(), {})
    shape = SpeculativeOptions(**options).shape()
    for drafter, wrong in ((TreeDrafter, False), (broken, True)):
        got = empirical(
            lambda d=drafter: d(DraftModelDrafter(model, 1, False, sampler), shape, sampler),
            target, prompt, steps, sampler, n,
        )  # fmt: skip
        assert chi_square_rejects(got, exact, n) == wrong, drafter.__name__


def test_sampling_children_and_rows(tiny, draft):
    """Under sampling, each node's children are distinct draws from the draft distribution q at the node (top-k 2:
    at most 2 children even where 3 are asked for), and child i's row is q without its earlier siblings,
    renormalised."""
    sampler = Sampler(temperature=0.8, top_k=2, seed=0)
    drafter = tree_drafter(draft, {"tree": "static", "branching": "3,3"}, sampler)
    context = ids_of(tiny)
    d = drafter.propose(context, 10)
    parents = parents_of(d)
    with torch.inference_mode():
        for node in [-1, *range(len(d.tokens))]:
            kids = [i for i, p in enumerate(parents) if p == node]
            if node >= 0 and d.positions[node] == 2:
                continue
            path, up = [], node
            while up >= 0:
                path, up = [d.tokens[up], *path], parents[up]
            q = sampler.probs(draft.model(torch.tensor([context + path])).logits[0, -1])
            assert len(kids) == 2 and len({d.tokens[i] for i in kids}) == 2
            for rank, kid in enumerate(kids):
                expected = q.clone()
                expected[[d.tokens[i] for i in kids[:rank]]] = 0
                torch.testing.assert_close(d.probs[kid], expected / expected.sum(), atol=1e-5, rtol=1e-4)


def first_token_counts(children, p: torch.Tensor, q: torch.Tensor, sampler: Sampler, n: int) -> dict:
    """The distribution of the first committed token when the engine verifies `children(q)` -> (tokens, rows)
    under the pending token, the target's distribution there being p."""
    logits = p.log().expand(8, -1)
    counts: Counter = Counter()
    for _ in range(n):
        tokens, rows = children(q)
        draft = Draft.tree(tokens, [-1] * len(tokens))
        draft.probs = rows
        path, following = verify.sampling(draft, logits, verify.Identity(), sampler)
        counts[(draft.tokens[path[0]] if path else following,)] += 1
    return {k: v / n for k, v in counts.items()}


def test_engine_needs_children_without_replacement():
    """Why children are drawn without replacement: the engine tests a repeated child once, so SpecInfer's i.i.d.
    draws (each tested against q) are biased; draws without replacement with the recursive rows are exact."""
    p, q = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.8, 0.1, 0.1])
    sampler, n = Sampler(seed=0), 20000
    exact = {(i,): float(v) for i, v in enumerate(p)}

    def iid(q):
        drawn = torch.multinomial(q, 2, replacement=True, generator=sampler.generator).tolist()
        tokens = list(dict.fromkeys(drawn))
        return tokens, q.expand(len(tokens), -1)

    def without_replacement(q):
        tokens = torch.multinomial(q, 2, replacement=False, generator=sampler.generator).tolist()
        second = q.clone()
        second[tokens[0]] = 0
        return tokens, torch.stack([q, second / second.sum()])

    sampler.reset(7)
    assert chi_square_rejects(first_token_counts(iid, p, q, sampler, n), exact, n)  # (0.2, 0.48, 0.32)
    assert not chi_square_rejects(first_token_counts(without_replacement, p, q, sampler, n), exact, n)
