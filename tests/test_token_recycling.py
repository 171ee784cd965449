"""Token Recycling: lossless vs `ar` for every tree shape, exact under sampling, the adjacency matrix really holds
the target's top-k and persists across generations (unless reset), valid tree templates, bad options refused."""

from __future__ import annotations

import pytest
import torch

from core.errors import BenchError
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Sampler, StopRule, verify_loop
from methods.token_recycling import TREES, RecyclingDrafter, Template, template
from tests.conftest import make_model
from tests.test_methods import PROMPTS, chi_square_rejects, empirical, exact_distribution

SIZES = {"paper": 80, "cpu8": 8, "cpu16": 16, "cpu24": 24}


def create(tiny, sampler=None, **options):
    return METHODS.get("token-recycling").create(tiny, sampler, options)


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("tree", list(TREES))
def test_lossless_equals_ar(tiny, tree, reset):
    method = create(tiny, tree=tree, reset_per_prompt=reset)
    for max_new in (1, 2, 7, 40):
        for prompt in PROMPTS:
            ids = tiny.tokenizer(prompt)["input_ids"]
            expected = Autoregressive(tiny, None).generate(ids, StopRule(max_new), Timer()).tokens
            got = method.generate(ids, StopRule(max_new), Timer())
            assert got.tokens == expected, f"{tree} reset={reset} diverged on {prompt!r} at {max_new}"
            assert sum(got.accepted) == len(got.tokens) == max_new


def test_drafts_are_accepted_once_the_matrix_is_warm(tiny):
    """The same prompt again: the matrix now predicts the target, so steps commit several tokens."""
    method = create(tiny, tree="cpu16")
    ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    cold = method.generate(ids, StopRule(40), Timer())
    warm = method.generate(ids, StopRule(40), Timer())
    assert warm.target_forwards < cold.target_forwards and max(warm.accepted) > 3
    fresh = create(tiny, tree="cpu16", reset_per_prompt=True)
    fresh.generate(ids, StopRule(40), Timer())
    assert fresh.generate(ids, StopRule(40), Timer()).accepted == cold.accepted  # reset: a cold start each time


def test_matrix_holds_the_targets_top_k(tiny):
    method = create(tiny, tree="cpu16")
    assert not method.matrix.any()  # the reference starts from zeros
    steps = []

    class Recording(RecyclingDrafter):
        def observe(self, draft, predicted, accepted):
            steps.append((self.ids.tolist(), draft.top.clone(), len(accepted) + 1))
            super().observe(draft, predicted, accepted)

    method.drafter = lambda: Recording(method.matrix, "cpu16")
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    tokens = method.generate(ids, StopRule(30), Timer()).tokens
    expected = {}
    for step_ids, top, _ in steps:  # every input row of every step; a later row of the same token wins
        expected |= dict(zip(step_ids, top.tolist(), strict=True))
    assert {t: method.matrix[t].tolist() for t in expected} == expected
    untouched = torch.ones(len(method.matrix), dtype=torch.bool)
    untouched[list(expected)] = False
    assert not method.matrix[untouched].any()
    with torch.inference_mode():
        logits = tiny.model(torch.tensor([ids + tokens])).logits[0]
    at = len(ids) - 1
    for _, top, committed in steps:  # the pending token's row: the target's top-k after the committed context
        torch.testing.assert_close(logits[at, top[0]], logits[at].topk(8).values)
        at += committed


def test_matrix_persists_across_generations_unless_reset(tiny):
    ids = tiny.tokenizer(PROMPTS[1])["input_ids"]
    kept, reset = create(tiny), create(tiny, reset_per_prompt=True)
    for method in (kept, reset):
        method.generate(ids, StopRule(10), Timer())
    before = kept.matrix.clone()
    assert before.any() and torch.equal(reset.matrix, before)
    kept.drafter()
    assert torch.equal(kept.matrix, before)
    reset.drafter()
    assert not reset.matrix.any()


def test_update_takes_the_later_row_of_a_repeated_token(tiny):
    matrix = torch.zeros(len(tiny.tokenizer), 8, dtype=torch.long)
    drafter = RecyclingDrafter(matrix, "cpu8")
    draft = drafter.propose([5, 7], budget=10)  # zero matrix: every tree token is 0
    assert draft.tokens == [0] * 8
    draft.top = torch.arange(9 * 8).reshape(9, 8)
    draft.top[8] = -1  # a row the LM head did not compute is skipped
    drafter.observe(draft, [0] * 9, [])
    assert matrix[7].tolist() == list(range(8)) and matrix[0].tolist() == draft.top[7].tolist()
    assert not matrix[1:7].any()


def test_budget_prunes_deep_nodes(tiny):
    drafter = RecyclingDrafter(torch.zeros(len(tiny.tokenizer), 8, dtype=torch.long), "paper")
    for budget, n in ((1, 8), (2, 29), (3, 54), (6, 80), (9, 80)):
        draft = drafter.propose([3], budget)
        assert len(draft.tokens) == n and max(map(len, draft.paths)) == min(budget, 6)


def test_stop_string_inside_accepted_block(tiny):
    ids = tiny.tokenizer(PROMPTS[1])["input_ids"]
    free = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer()).tokens
    stop = StopRule(40, stop_strings=(tiny.tokenizer.decode(free[10:12]),), tokenizer=tiny.tokenizer)
    expected = Autoregressive(tiny, None).generate(ids, stop, Timer()).tokens
    method = create(tiny, tree="cpu24")
    method.generate(ids, StopRule(40), Timer())  # warm: the stop falls inside a multi-token step
    got = method.generate(ids, stop, Timer())
    assert got.tokens == expected and len(expected) < 40 and max(got.accepted) > 1


def test_sampling_matches_target_distribution():
    vocab = 5
    target = make_model(vocab, seed=3, layers=1, eos=None)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.3)
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3, 1, 2, 4, 1, 2], 3, 2000
    exact = exact_distribution(target, prompt, steps, sampler)
    matrix = torch.zeros(vocab, 4, dtype=torch.long)  # one matrix for all generations, as in a run
    used = []

    def make():
        used.append(RecyclingDrafter(matrix, "cpu8"))
        return used[-1]

    got = empirical(make, target, prompt, steps, sampler, n)
    assert matrix.any() and not chi_square_rejects(got, exact, n)
    sampler.reset(5)
    accepted = verify_loop(target, prompt, StopRule(30), Timer(), make(), sampler).accepted
    assert max(accepted) > 1  # the drafts do get accepted, so the test exercises the rejection sampler


def test_tree_templates_are_valid():
    for name, size in SIZES.items():
        t = template(name)
        assert len(TREES[name]) == size
        assert all(p < i for i, p in enumerate(t.parents))
        assert all(t.depths[i] == (1 if p < 0 else t.depths[p] + 1) for i, p in enumerate(t.parents))
        assert set(TREES[name]) <= set(TREES["paper"])  # the CPU shapes are subtrees of the paper's tree
    levels = [sum(d == k for d in template("paper").depths) for k in range(1, 7)]
    assert levels == [8, 21, 25, 15, 8, 3]  # the reference README's per-level counts
    with pytest.raises(ValueError, match="parent"):
        Template.of(((0,), (1, 0)))
    with pytest.raises(ValueError, match="level by level"):
        Template.of(((0,), (0, 0), (1,)))


def test_max_step_tokens(tiny):
    for name, size in SIZES.items():
        assert create(tiny, tree=name).max_step_tokens() == 1 + size


def test_invalid_options(tiny):
    with pytest.raises(BenchError, match="--tree must be one of"):
        create(tiny, tree="cpu7")
    with pytest.raises(BenchError, match="--topk must be at least 1"):
        create(tiny, topk=0)
    with pytest.raises(BenchError, match="--topk must be at least 8"):
        create(tiny, tree="paper", topk=4)
    with pytest.raises(BenchError, match="exceeds the model's vocabulary"):
        create(tiny, tree="cpu8", topk=1000)
    with pytest.raises(BenchError, match="--reset-per-prompt must be bool"):
        create(tiny, reset_per_prompt="yes")
