"""Sliding-window and hybrid caches: every drafting method stays lossless past the window (tiny random Mistral
with sliding_window 8 on every layer, tiny Gemma 3 mixing sliding and full layers), under every attention
implementation the engine allows; rollback and draft masks equal a cache-free forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM

from core.attention import NAME
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.base import METHODS
from methods.decode import Draft, StopRule, _attention
from methods.kvcache import MARGIN, SlidingLayer, keep, new_cache

WINDOW = 8
IMPLEMENTATIONS = ("sdpa", "eager", NAME)
PROMPT = "the quick brown fox jumps over the lazy dog. the quick brown fox"  # 15 tokens: past the window already
MAX_NEW = 40
SETTINGS = [
    ("ar", {}),
    ("pld", {}),
    ("pld", {"max_ngram": 1, "num_candidates": 12}),  # drafts longer than the window
    ("lookahead", {"window": 3, "ngram": 3, "guess": 3}),
    ("lookahead", {"window": 7, "ngram": 4, "guess": 5}),  # window tokens beyond the sliding window
    ("jacobi", {"window": 4}),
    ("speculative", {"num_draft": 4}),  # the model as its own draft
    ("speculative-other", {"num_draft": 3}),  # another sliding model: its cache rolls back across several updates
]


def mistral(vocab: int, seed: int = 0) -> MistralForCausalLM:
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, sliding_window=WINDOW, eos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    return _sharpen(MistralForCausalLM(config))


def gemma3(vocab: int, seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=WINDOW, eos_token_id=None,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )  # fmt: skip
    return _sharpen(Gemma3ForCausalLM(config))


def _sharpen(model):
    with torch.no_grad():  # random init gives nearly flat logits: sharpen them so greedy choices are not near-ties
        model.lm_head.weight.mul_(8.0)
    return model.eval()


BUILDERS = {"mistral": mistral, "gemma3": gemma3}


@pytest.fixture(scope="module", params=[(b, i) for b in BUILDERS for i in IMPLEMENTATIONS], ids="-".join)
def sliding(request, tiny_tokenizer) -> tuple[LoadedModel, LoadedModel]:
    """A sliding-window target and another sliding model as a draft, both on one attention implementation."""
    builder, impl = request.param
    models = [BUILDERS[builder](len(tiny_tokenizer), seed) for seed in (0, 1)]
    for model in models:
        model.set_attn_implementation(impl)
    return tuple(LoadedModel(model, tiny_tokenizer, {"spec": f"{builder}-{seed}"}) for seed, model in enumerate(models))


def greedy_without_cache(model, ids: list[int], n: int) -> list[int]:
    out = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def test_ar_equals_cache_free_greedy(sliding):
    target, _ = sliding
    ids = target.tokenizer(PROMPT)["input_ids"]
    got = METHODS.get("ar").create(target, None).generate(ids, StopRule(MAX_NEW), Timer()).tokens
    assert got == greedy_without_cache(target.model, ids, MAX_NEW)


@pytest.mark.parametrize(("name", "options"), SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS)])
def test_lossless_past_the_window(sliding, name, options):
    target, other = sliding
    draft = {"speculative": target, "speculative-other": other}.get(name)
    method = METHODS.get(name.removesuffix("-other")).create(target, None, options, draft)
    ids = target.tokenizer(PROMPT)["input_ids"]
    assert len(ids) > WINDOW
    expected = METHODS.get("ar").create(target, None).generate(ids, StopRule(MAX_NEW), Timer()).tokens
    got = method.generate(ids, StopRule(MAX_NEW), Timer())
    assert got.tokens == expected and sum(got.accepted) == MAX_NEW


def test_draft_mask_and_rollback_equal_cache_free_forward(sliding):
    """A Lookahead-shaped step (5 unrelated tokens, then a 10-token chain: longer than the window) through the
    engine's own mask: the chain's logits are the cache-free forward's; after keeping the chain, the next step too."""
    model = sliding[0].model
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(model.config.vocab_size, (1, 20), generator=gen)[0].tolist()  # last one: the pending token
    junk = torch.randint(model.config.vocab_size, (5,), generator=gen).tolist()
    chain = torch.randint(model.config.vocab_size, (10,), generator=gen).tolist()
    visible = torch.zeros(15, 15, dtype=torch.bool)
    visible[:5, :5] = torch.ones(5, 5).tril() > 0
    visible[5:, 5:] = torch.ones(10, 10).tril() > 0
    draft = Draft(junk + chain, [list(range(5, 15))], [1, 2, 3, 4, 5, *range(1, 11)], visible)
    cached = len(ids) - 1
    with torch.inference_mode():
        reference = model(torch.tensor([ids + chain])).logits[0, cached:]
        cache = new_cache(model)
        model(torch.tensor([ids[:-1]]), past_key_values=cache)
        positions, mask = _attention(draft, cached, torch.device("cpu"), model, cache)
        step = torch.tensor([[ids[-1], *draft.tokens]])
        logits = model(step, past_key_values=cache, position_ids=positions, attention_mask=mask).logits[0]
        torch.testing.assert_close(logits[[0, *range(6, 16)]], reference, atol=1e-4, rtol=1e-4)
        keep(cache, cached, len(draft.tokens), list(range(5, 15)))
        assert cache.get_seq_length() == len(ids) + len(chain)
        nxt = int(reference[-1].argmax())
        after = model(torch.tensor([[nxt]]), past_key_values=cache).logits[0, -1]
        torch.testing.assert_close(
            after, model(torch.tensor([ids + chain + [nxt]])).logits[0, -1], atol=1e-4, rtol=1e-4
        )
    masks = mask if isinstance(mask, dict) else {"": mask}
    hybrid = isinstance(model, Gemma3ForCausalLM)
    assert set(masks) == ({"sliding_attention", "full_attention"} if hybrid else {""})
    assert all(m.dtype == torch.float32 and m.shape[:3] == (1, 1, 16) for m in masks.values())


def test_stock_sliding_layer_cannot_roll_back(tiny_tokenizer):
    """Why the engine brings its own sliding layer: transformers' refuses a crop once the window is full."""
    model = mistral(len(tiny_tokenizer))
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(torch.arange(12)[None], past_key_values=cache)
    with pytest.raises(RuntimeError, match="does not track past states"):
        cache.crop(-2)


def test_sliding_layer_keeps_a_margin_and_refuses_deeper_rollback():
    layer, n = SlidingLayer(WINDOW), WINDOW + MARGIN + 300
    for i in range(n):  # single positions, as an autoregressive loop adds them
        k = torch.full((1, 1, 1, 2), float(i))
        seen_keys, _ = layer.update(k, k)
        assert seen_keys.shape[-2] == min(i, WINDOW - 1) + 1 and seen_keys[0, 0, -1, 0] == i
    assert layer.keys.shape[-2] >= WINDOW - 1 + MARGIN and layer.get_seq_length() == n
    layer.crop(-MARGIN)  # a rollback over many earlier updates
    keys, _ = layer.update(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert keys[0, 0, :-1, 0].tolist() == [float(i) for i in range(n - MARGIN - WINDOW + 1, n - MARGIN)]
    with pytest.raises(BenchError, match="cannot roll a sliding-window layer back"):
        layer.crop(-(layer.keys.shape[-2] - WINDOW + 2))
