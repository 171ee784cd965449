"""Lossless methods equal `ar` token for token in fp32; cache rollback; sampling verification is exact."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from transformers import DynamicCache

from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Draft, Sampler, StopRule, _attention, verify_loop
from methods.kvcache import keep, new_cache
from methods.lookahead import LookaheadDrafter, LookaheadOptions
from methods.speculative import DraftModelDrafter
from tests.conftest import make_model, make_tokenizer

PROMPTS = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\ndef add(",
    "Write a poem about the sea and the sky",
]
SETTINGS = [
    ("pld", {}),
    ("pld", {"max_ngram": 1, "num_candidates": 3}),
    ("lookahead", {"window": 3, "ngram": 3, "guess": 3}),
    ("lookahead", {"window": 5, "ngram": 4, "guess": 7, "prompt_ngrams": False}),
    ("lookahead", {"window": 1, "ngram": 2, "guess": 1}),
    ("lookahead", {"window": 4, "ngram": 4, "guess": 4, "prompt_ngrams": True, "commit_full": True}),
    ("lookahead", {"window": 3, "ngram": 5, "guess": 6, "prompt_ngrams": True, "share_prefixes": True}),
    ("jacobi", {"window": 4}),
    ("speculative", {"num_draft": 3}),
    ("speculative", {"num_draft": 2, "adaptive": True}),
    ("speculative-self", {"num_draft": 4}),
    ("hf-pld", {}),
    ("hf-assisted", {}),
]


@pytest.fixture(scope="module")
def draft(tiny) -> LoadedModel:
    """A different random model with the same tokenizer (low acceptance)."""
    return LoadedModel(make_model(len(tiny.tokenizer), seed=1, layers=1), tiny.tokenizer, {"spec": "tiny-draft"})


def build(name, options, tiny, draft, sampler=None):
    if name == "speculative-self":  # the target as its own draft: every draft token is accepted
        return METHODS.get("speculative").create(tiny, sampler, options, draft=tiny)
    if name in ("speculative", "hf-assisted"):
        return METHODS.get(name).create(tiny, sampler, options, draft=draft)
    return METHODS.get(name).create(tiny, sampler, options)


@pytest.mark.parametrize(("name", "options"), SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS)])
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_lossless_equals_ar(tiny, draft, name, options, max_new):
    assert_equals_ar(build(name, options, tiny, draft), tiny, PROMPTS, max_new, f"{name} {options}")


def assert_equals_ar(method, model, prompts, max_new: int, label: str) -> None:
    """`method` decodes every prompt token-for-token as `ar` greedy does, committing exactly `max_new` tokens."""
    for prompt in prompts:
        ids = model.tokenizer(prompt)["input_ids"]
        expected = Autoregressive(model, None).generate(ids, StopRule(max_new), Timer()).tokens
        got = method.generate(ids, StopRule(max_new), Timer())
        assert got.tokens == expected, f"{label} diverged on {prompt!r}"
        assert sum(got.accepted) == len(got.tokens) == max_new


@pytest.mark.parametrize(("name", "options"), SETTINGS[:9], ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS[:9])])
def test_eos_inside_accepted_block(tiny, draft, name, options):
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    free = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer()).tokens
    eos = free[12]
    stop = StopRule(40, frozenset({eos}))
    got = build(name, options, tiny, draft).generate(ids, stop, Timer())
    assert got.tokens == free[: free.index(eos) + 1]
    assert sum(got.accepted) == len(got.tokens)


def test_methods_commit_several_tokens_per_forward(tiny, draft):
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    for name, options in (("speculative-self", {"num_draft": 4}), ("pld", {})):
        got = build(name, options, tiny, draft).generate(ids, StopRule(40), Timer())
        assert max(got.accepted) > 1 and got.target_forwards < 40
    spec = build("speculative-self", {"num_draft": 4}, tiny, draft).generate(ids, StopRule(40), Timer())
    assert spec.draft_forwards > 0


@pytest.mark.parametrize("make_cache", [new_cache, lambda m: DynamicCache(config=m.config)], ids=["growing", "stock"])
def test_cache_after_rollback_equals_ar_cache(tiny, make_cache):
    """Keeping non-contiguous accepted positions (a Lookahead-style draft) leaves the AR cache of those tokens."""
    model = tiny.model
    ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    truth = Autoregressive(tiny, None).generate(ids, StopRule(6), Timer()).tokens
    context = ids + truth[:1]
    cache = make_cache(model)
    with torch.inference_mode():
        model(torch.tensor([ids]), past_key_values=cache)
        # extra tokens: 3 unrelated window tokens, then a wrong guess, then the right continuation
        draft = Draft(
            tokens=[5, 6, 7, truth[1] + 1, truth[1], truth[2], truth[3]],
            paths=[[3], [4, 5, 6]],
            positions=[1, 2, 3, 1, 1, 2, 3],
            visible=torch.tensor(
                [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0],
                 [0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool),
        )  # fmt: skip
        positions, mask = _attention(draft, len(ids), torch.device("cpu"))
        step = torch.tensor([[truth[0], *draft.tokens]])
        logits = model(step, past_key_values=cache, position_ids=positions, attention_mask=mask).logits[0]
        assert logits.argmax(-1)[[0, 5, 6]].tolist() == truth[1:4]  # branch tokens see the right context
        keep(cache, len(ids), len(draft.tokens), [4, 5, 6])
        reference = DynamicCache(config=model.config)
        model(torch.tensor([context + truth[1:4]]), past_key_values=reference)
        # the cache keeps working after the rollback: one more step equals the reference's
        nxt = torch.tensor([[truth[4]]])
        torch.testing.assert_close(
            model(nxt, past_key_values=cache).logits, model(nxt, past_key_values=reference).logits, atol=1e-5, rtol=1e-5
        )
    for ours, ref in zip(cache.layers, reference.layers, strict=True):
        assert ours.keys.shape == ref.keys.shape
        torch.testing.assert_close(ours.keys, ref.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, ref.values, atol=1e-5, rtol=1e-5)


def test_invalid_settings(tiny, draft):
    with pytest.raises(BenchError, match="--window must be at least 1"):
        METHODS.get("lookahead").create(tiny, None, {"window": 0})
    with pytest.raises(BenchError, match="--ngram must be at least 2"):
        METHODS.get("lookahead").create(tiny, None, {"ngram": 1})
    with pytest.raises(BenchError, match="--window must be at least 1"):
        METHODS.get("jacobi").create(tiny, None, {"window": 0})
    with pytest.raises(BenchError, match="needs a draft model"):
        METHODS.get("speculative").create(tiny, None)
    with pytest.raises(BenchError, match="--num-draft must be at least 1"):
        METHODS.get("speculative").create(tiny, None, {"num_draft": 0}, draft)
    with pytest.raises(BenchError, match="does not take --window"):
        METHODS.get("pld").create(tiny, None, {"window": 3})
    with pytest.raises(BenchError, match="--guess must be int"):
        METHODS.get("lookahead").create(tiny, None, {"guess": "5"})
    other = make_tokenizer()
    other.add_tokens(["<extra>"])
    foreign = LoadedModel(make_model(len(other), seed=2, layers=1), other, {"spec": "foreign"})
    with pytest.raises(BenchError, match="different tokenizer"):
        METHODS.get("speculative").create(tiny, None, draft=foreign)


# --- sampling verification: the output distribution must be the target's -------------------------------

VOCAB = 5


class NoTokenizer:
    def get_vocab(self):
        return {str(i): i for i in range(VOCAB)}

    def __len__(self):
        return VOCAB


def exact_distribution(model, prompt: list[int], steps: int, sampler: Sampler) -> dict[tuple[int, ...], float]:
    dist = {}
    with torch.inference_mode():
        for seq in itertools.product(range(VOCAB), repeat=steps):
            logits = model(torch.tensor([prompt + list(seq)])).logits[0]
            probs = sampler.probs(logits[len(prompt) - 1 : len(prompt) - 1 + steps])
            dist[seq] = float(torch.prod(probs[torch.arange(steps), torch.tensor(seq)]))
    return dist


def empirical(make_drafter, model, prompt, steps, sampler, n) -> dict[tuple[int, ...], float]:
    counts: Counter = Counter()
    sampler.reset(123)
    for _ in range(n):
        result = verify_loop(model, prompt, StopRule(steps), Timer(), make_drafter(), sampler)
        counts[tuple(result.tokens)] += 1
    return {k: v / n for k, v in counts.items()}


def total_variation(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def chi_square_rejects(observed: dict, exact: dict, n: int, z: float = 3.09) -> bool:
    """Pearson's chi-square goodness-of-fit test at level ~1e-3 (Wilson-Hilferty critical value)."""
    stat = sum((observed.get(k, 0.0) * n - n * p) ** 2 / (n * p) for k, p in exact.items())
    df = len(exact) - 1
    critical = df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
    return stat > critical


@pytest.fixture(scope="module")
def small_pair():
    target = make_model(VOCAB, seed=3, layers=1, eos=None)
    drafter_model = make_model(VOCAB, seed=4, layers=1, eos=None)
    with torch.no_grad():  # flatten the lm heads so both models are uncertain, and differently so
        target.lm_head.weight.mul_(0.3)
        drafter_model.lm_head.weight.mul_(0.3)
    return target, drafter_model


def test_speculative_sampling_matches_target_distribution(small_pair):
    target, drafter_model = small_pair
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3], 3, 3000
    exact = exact_distribution(target, prompt, steps, sampler)
    draft_dist = exact_distribution(drafter_model, prompt, steps, sampler)
    assert total_variation(exact, draft_dist) > 0.2  # the draft alone would be caught
    draft = LoadedModel(drafter_model, NoTokenizer(), {})
    got = empirical(lambda: DraftModelDrafter(draft, 2, False, sampler), target, prompt, steps, sampler, n)
    assert not chi_square_rejects(got, exact, n)

    class AcceptAll(DraftModelDrafter):  # a broken rule: treat draft tokens as always right
        def propose(self, context, budget):
            d = super().propose(context, budget)
            return Draft.chain(d.tokens, torch.nn.functional.one_hot(torch.tensor(d.tokens), VOCAB).float() * 0 + 1e-9)

    broken = empirical(lambda: AcceptAll(draft, 2, False, sampler), target, prompt, steps, sampler, n)
    assert chi_square_rejects(broken, exact, n)


def test_lookahead_sampling_matches_target_distribution(small_pair):
    target, _ = small_pair
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3, 1, 2, 4, 1, 2], 3, 3000
    exact = exact_distribution(target, prompt, steps, sampler)
    got = empirical(
        lambda: LookaheadDrafter(LookaheadOptions(window=2, ngram=3, guess=4, prompt_ngrams=True)),
        target,
        prompt,
        steps,
        sampler,
        n,
    )
    assert not chi_square_rejects(got, exact, n)


@pytest.mark.parametrize(("name", "options"), SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS)])
def test_stop_string_inside_accepted_block(tiny, draft, name, options):
    ids = tiny.tokenizer(PROMPTS[1])["input_ids"]
    free = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer()).tokens
    target = tiny.tokenizer.decode(free[10:12])
    stop = StopRule(40, stop_strings=(target,), tokenizer=tiny.tokenizer)
    expected = Autoregressive(tiny, None).generate(ids, stop, Timer()).tokens
    got = build(name, options, tiny, draft).generate(ids, stop, Timer())
    assert got.tokens == expected and len(expected) < 40
