"""The shared decode engine: autoregressive equality with transformers, stop rules, drafted verification."""

from __future__ import annotations

import pytest
import torch

from core.timing import Timer
from methods.ar import Autoregressive
from methods.decode import Draft, Sampler, StopRule, verify_loop
from methods.hf import HFGenerate

PROMPTS = ["Write a poem about the sea", "def add(a, b):", "the quick brown fox jumps", "Hawaii"]


def hf_greedy(model, ids: list[int], max_new: int, eos: list[int] | None) -> list[int]:
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ar_equals_generate_token_for_token(tiny, prompt):
    ids = tiny.tokenizer(prompt)["input_ids"]
    expected = hf_greedy(tiny.model, ids, 40, None)
    result = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer())
    assert result.tokens == expected
    assert result.accepted == [1] * 40 and result.target_forwards == 40


def test_eos_ends_generation_inclusive(tiny):
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    free = Autoregressive(tiny, None).generate(ids, StopRule(30), Timer()).tokens
    eos = free[7]  # pretend the 8th token is an end-of-sequence id
    stopped = Autoregressive(tiny, None).generate(ids, StopRule(30, frozenset({eos})), Timer())
    cut = free.index(eos) + 1
    assert stopped.tokens == free[:cut]
    assert sum(stopped.accepted) == cut == stopped.target_forwards
    assert stopped.tokens == hf_greedy(tiny.model, ids, 30, [eos])


def test_stop_string_ends_generation(tiny):
    ids = tiny.tokenizer(PROMPTS[1])["input_ids"]
    free = Autoregressive(tiny, None).generate(ids, StopRule(30), Timer()).tokens
    target = tiny.tokenizer.decode(free[5:7])
    stop = StopRule(30, stop_strings=(target,), tokenizer=tiny.tokenizer)
    tokens = Autoregressive(tiny, None).generate(ids, stop, Timer()).tokens
    text = tiny.tokenizer.decode(tokens)
    assert target in text and target not in tiny.tokenizer.decode(tokens[:-1])


def test_max_new_tokens_one(tiny):
    ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    result = Autoregressive(tiny, None).generate(ids, StopRule(1), Timer())
    assert result.tokens == hf_greedy(tiny.model, ids, 1, None)
    assert result.accepted == [1]


def test_hf_method_matches_ar(tiny):
    ids = tiny.tokenizer(PROMPTS[3])["input_ids"]
    ar = Autoregressive(tiny, None).generate(ids, StopRule(25), Timer())
    hf = HFGenerate(tiny, None).generate(ids, StopRule(25), Timer())
    assert hf.tokens == ar.tokens
    assert len(hf.timing.steps) == 24  # one mark per token after the first


class OracleDrafter:
    """Proposes the true greedy continuation with every `wrong_every`-th guess corrupted."""

    def __init__(self, prompt_len: int, truth: list[int], k: int, wrong_every: int) -> None:
        self.prompt_len, self.truth, self.k, self.wrong_every = prompt_len, truth, k, wrong_every
        self.draft_forwards = 0
        self.calls = 0

    def propose(self, context: list[int], max_tokens: int) -> list[int]:
        self.calls += 1
        done = len(context) - self.prompt_len
        guess = self.truth[done : done + min(self.k, max_tokens)]
        if self.calls % self.wrong_every == 0 and guess:
            guess = guess[:-1] + [(guess[-1] + 1) % 300]
        return Draft.chain(guess)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        assert predicted[: len(accepted)] == [draft.tokens[i] for i in accepted]


@pytest.mark.parametrize(("k", "wrong_every", "max_new"), [(1, 2, 30), (4, 3, 30), (6, 1, 17), (5, 2, 2)])
def test_verify_loop_with_drafts_equals_ar(tiny, k, wrong_every, max_new):
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    truth = Autoregressive(tiny, None).generate(ids, StopRule(max_new + 8), Timer()).tokens
    drafter = OracleDrafter(len(ids), truth, k, wrong_every)
    timer = Timer()
    result = verify_loop(tiny.model, ids, StopRule(max_new), timer, drafter=drafter)
    assert result.tokens == truth[:max_new]
    assert sum(result.accepted) == max_new
    if max_new > 2:
        assert len(result.accepted) < max_new  # drafting saved target forwards


def test_first_forward_runs_the_prompt_with_the_first_draft(tiny):
    ids = tiny.tokenizer(PROMPTS[1])["input_ids"]
    truth = Autoregressive(tiny, None).generate(ids, StopRule(20), Timer()).tokens
    drafter = OracleDrafter(len(ids), truth, 4, 1000)
    calls = []
    hook = tiny.model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    try:
        result = verify_loop(tiny.model, ids, StopRule(20), Timer(), drafter=drafter)
    finally:
        hook.remove()
    assert result.tokens == truth
    assert result.accepted == [5, 5, 5, 5]  # no separate prefill: the prompt's forward verifies 4 drafted tokens
    assert len(calls) == 4


def test_verify_loop_eos_inside_accepted_block(tiny):
    ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    truth = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer()).tokens
    eos = truth[9]
    cut = truth.index(eos) + 1
    drafter = OracleDrafter(len(ids), truth, 6, 1000)
    result = verify_loop(tiny.model, ids, StopRule(40, frozenset({eos})), Timer(), drafter=drafter)
    assert result.tokens == truth[:cut]
    assert sum(result.accepted) == cut


def test_sampling_is_reproducible_and_matches_distribution_support(tiny):
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    sampler = Sampler(temperature=1.0, seed=7)
    a = Autoregressive(tiny, sampler).generate(ids, StopRule(20), Timer()).tokens
    sampler.reset()
    b = Autoregressive(tiny, sampler).generate(ids, StopRule(20), Timer()).tokens
    sampler.reset(8)
    c = Autoregressive(tiny, sampler).generate(ids, StopRule(20), Timer()).tokens
    assert a == b and a != c


def test_sampler_top_k_top_p():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    probs = Sampler(top_k=2).probs(logits)
    assert (probs[2:] == 0).all() and probs[:2].sum().item() == pytest.approx(1.0)
    full = torch.softmax(logits, -1)
    # top_p just above p(top1) keeps the first two tokens only
    probs = Sampler(top_p=float(full[0]) + 1e-3).probs(logits)
    assert (probs[:2] > 0).all() and (probs[2:] == 0).all()
    probs = Sampler(temperature=0.5).probs(logits)
    assert torch.allclose(probs, torch.softmax(logits / 0.5, -1))


def test_tree_draft_layout():
    # root a (0) with children b (1) and c (2); b has child d (3); a second root e (4)
    draft = Draft.tree([10, 11, 12, 13, 14], [-1, 0, 0, 1, -1])
    assert draft.paths == [[0, 2], [0, 1, 3], [4]]
    assert draft.positions == [1, 2, 2, 3, 1]
    assert draft.visible[3].tolist() == [True, True, False, True, False]
    assert draft.visible[2].tolist() == [True, False, True, False, False]


class TreeOracle:
    """A token tree per step: wrong siblings around the true continuation, which hides in the last branch."""

    topk = 3

    def __init__(self, prompt_len: int, truth: list[int]) -> None:
        self.prompt_len, self.truth = prompt_len, truth
        self.draft_forwards = 0
        self.tops: list[torch.Tensor] = []

    def propose(self, context: list[int], budget: int) -> Draft:
        done = len(context) - self.prompt_len
        true = self.truth[done : done + min(3, budget)]
        wrong = [(t + 1) % 300 for t in true]
        tokens = [wrong[0], *true]  # a wrong root, then the true chain
        parents = [-1, -1, *range(1, len(true))]
        if len(true) > 1:  # a wrong sibling of the true second token
            tokens.append(wrong[1])
            parents.append(1)
        return Draft.tree(tokens, parents)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        assert draft.top is not None and draft.top.shape == (len(draft.tokens) + 1, 3)
        assert draft.top[:, 0].tolist() == predicted  # the top-1 of each row is the target's argmax
        self.tops.append(draft.top)


def test_tree_drafts_verify_losslessly_and_get_the_top_k(tiny):
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    truth = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer()).tokens
    drafter = TreeOracle(len(ids), truth)
    result = verify_loop(tiny.model, ids, StopRule(30), Timer(), drafter=drafter)
    assert result.tokens == truth[:30]
    assert max(result.accepted) == 4 and len(drafter.tops) == len(result.accepted)
