"""One attention path for the baseline and every method (`decodebench_sdpa`), draft masks every allowed
attention implementation honours (eager included), refusal of the others, and `keep`'s moves."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers.integrations.sdpa_attention as stock_sdpa
from transformers import LlamaConfig

from core import models
from core.attention import NAME, sdpa_forward
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.base import METHODS
from methods.decode import Draft, StopRule, _attention
from methods.kvcache import GrowingLayer, keep, new_cache
from tests.conftest import make_model

IMPLEMENTATIONS = ("eager", "sdpa", NAME)
PROMPTS = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\ndef add(",
]


class Module(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def _stock(query, key, value, mask, **kwargs):
    return stock_sdpa.sdpa_attention_forward(Module(), query, key, value, mask, **kwargs)[0]


@pytest.mark.parametrize("q", [1, 5])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_kernel_equals_stock_sdpa(q, mask_kind):
    gen = torch.Generator().manual_seed(q)
    query = torch.randn(2, 9, q, 16, generator=gen)
    key, value = torch.randn(2, 3, 40, 16, generator=gen), torch.randn(2, 3, 40, 16, generator=gen)
    allowed = torch.rand(2, 1, q, 40, generator=gen) > 0.3
    allowed[..., 0] = True
    mask = {"none": None, "bool": allowed, "float": torch.zeros(allowed.shape).masked_fill(~allowed, -3e38)}[mask_kind]
    ours, weights = sdpa_forward(Module(), query, key, value, mask, scaling=0.3)
    assert weights is None and ours.shape == (2, q, 9, 16)
    torch.testing.assert_close(ours, _stock(query, key, value, mask, scaling=0.3), atol=1e-5, rtol=1e-5)


def counting_repeat_kv(monkeypatch) -> list[int]:
    calls = []

    def counted(hidden_states, n_rep):
        calls.append(hidden_states.shape[-2])
        return repeat_kv(hidden_states, n_rep)

    repeat_kv = stock_sdpa.repeat_kv
    monkeypatch.setattr(stock_sdpa, "repeat_kv", counted)
    return calls


@pytest.mark.parametrize("impl", ["sdpa", NAME])
def test_verification_step_does_not_copy_the_cache(monkeypatch, tiny_tokenizer, impl):
    """Stock sdpa repeats the KV cache on a masked multi-token step (not on a single token); ours never does."""
    model = make_model(len(tiny_tokenizer))
    model.set_attn_implementation(impl)
    calls = counting_repeat_kv(monkeypatch)
    cache = new_cache(model)
    with torch.inference_mode():
        model(torch.arange(3, 30)[None], past_key_values=cache)  # prefill: causal, no mask
        model(torch.tensor([[5]]), past_key_values=cache)  # an autoregressive step
        assert calls == []
        model(torch.tensor([[5, 6, 7, 8, 9]]), past_key_values=cache)  # a verification step
    assert calls == ([] if impl == NAME else [33] * 2 * model.config.num_hidden_layers)


def test_loaded_models_run_ours_and_record_it(tiny_dir):
    loaded = models.load(str(tiny_dir))
    assert loaded.model.config._attn_implementation == loaded.artifact["attention"] == NAME


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_engine_mask_equals_the_models_own(tiny_tokenizer, impl):
    """A chain through the engine's 4D mask gives the logits of the same chain with transformers' own mask."""
    model = make_model(len(tiny_tokenizer))
    model.set_attn_implementation(impl)
    ids, chain = list(range(3, 23)), [7, 8, 9, 10]
    logits = []
    with torch.inference_mode():
        for custom in (False, True):
            cache = new_cache(model)
            model(torch.tensor([ids]), past_key_values=cache)
            step = torch.tensor([[5, *chain]])
            if custom:
                draft = Draft(chain, [[0, 1, 2, 3]], positions=[1, 2, 3, 4], visible=torch.ones(4, 4).tril() > 0)
                positions, mask = _attention(draft, len(ids), torch.device("cpu"), model, cache)
                assert mask.dtype == torch.float32  # additive: eager adds a boolean mask, masking nothing
                logits.append(model(step, past_key_values=cache, position_ids=positions, attention_mask=mask).logits)
            else:
                logits.append(model(step, past_key_values=cache).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)


SETTINGS = [
    ("pld", {}),
    ("lookahead", {"window": 3, "ngram": 3, "guess": 3}),
    ("lookahead", {"window": 5, "ngram": 4, "guess": 7, "prompt_ngrams": False}),
    ("jacobi", {"window": 4}),
]


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def on_impl(request, tiny_tokenizer) -> LoadedModel:
    model = make_model(len(tiny_tokenizer), eos=tiny_tokenizer.eos_token_id)
    model.set_attn_implementation(request.param)
    return LoadedModel(model, tiny_tokenizer, {"spec": f"tiny-{request.param}"})


@pytest.mark.parametrize(("name", "options"), SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS)])
def test_lossless_under_every_implementation(on_impl, name, options):
    method = METHODS.get(name).create(on_impl, None, options)
    for prompt in PROMPTS:
        ids = on_impl.tokenizer(prompt)["input_ids"]
        expected = METHODS.get("ar").create(on_impl, None).generate(ids, StopRule(40), Timer()).tokens
        assert method.generate(ids, StopRule(40), Timer()).tokens == expected


def test_unsupported_attention_or_layers_refused_before_decoding(tiny_tokenizer):
    model = make_model(len(tiny_tokenizer))
    model.set_attn_implementation("flex_attention")  # would need a BlockMask, not the engine's 4D mask
    loaded = LoadedModel(model, tiny_tokenizer, {})
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    for name in ("ar", "lookahead"):
        with pytest.raises(BenchError, match="'flex_attention' is not supported by the decode engine"):
            METHODS.get(name).create(loaded, None).generate([3, 4, 5], StopRule(5), Timer())
    assert forwards == []
    config = LlamaConfig(num_hidden_layers=2, layer_types=["chunked_attention", "full_attention"])
    config.attention_chunk_size, config._attn_implementation_internal = 4, NAME  # Llama 4's chunked layers
    with pytest.raises(BenchError, match="full and sliding-window attention layers only; this model has chunked"):
        new_cache(SimpleNamespace(config=config))


def filled_cache(n: int):
    """A cache whose key/value at position p is p (2 layers)."""
    cache = new_cache(make_model(8, layers=2, eos=None))
    for layer in cache.layers:
        positions = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(1, 2, n, 4)
        layer.update(positions.clone(), -positions)
    return cache


@pytest.mark.parametrize(
    "accepted", [[], [0, 1, 2], [4, 5, 6], [1, 2, 3], [7], [1, 3, 6]], ids=lambda a: "-".join(map(str, a)) or "none"
)
def test_keep_moves_accepted_positions(monkeypatch, accepted):
    cached, n_step = 10, 8  # positions 0..9 cached, 10 the pending token, 11..18 the draft
    cache = filled_cache(cached + 1 + n_step)
    contiguous = accepted == list(range(accepted[0], accepted[0] + len(accepted))) if accepted else True
    if contiguous:  # one slice copy per layer: no index tensor, no index_select

        def refuse(*args, **kwargs):
            raise AssertionError("index_select on a contiguous accepted range")

        monkeypatch.setattr(torch.Tensor, "index_select", refuse)
    keep(cache, cached, n_step, accepted)
    expected = [*range(cached + 1), *(cached + 1 + i for i in accepted)]
    for layer in cache.layers:
        assert isinstance(layer, GrowingLayer)
        assert layer.keys[0, 1, :, 2].tolist() == expected
        assert layer.values[0, 0, :, 3].tolist() == [-p for p in expected]
