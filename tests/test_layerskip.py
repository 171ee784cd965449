"""`layerskip`: lossless vs `ar`, exact under sampling, the target stays the full model, the draft's own cache is
right after a rollback, `auto` searches once per model and caches its choice, bad skip sets are refused."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods import layerskip_search
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Draft, Sampler, StopRule, verify_loop
from methods.layerskip import LayerSkipDrafter, SkipCache, Skipped, alternate, parse_skip, skip_view
from tests.conftest import make_model
from tests.test_methods import (
    PROMPTS,
    VOCAB,
    assert_equals_ar,
    chi_square_rejects,
    empirical,
    exact_distribution,
    total_variation,
)
from tests.test_sliding import gemma3

SETTINGS = [
    {"skip_layers": "none", "stop_threshold": 0.0},
    {"skip_layers": "1"},
    {"skip_layers": "1-2", "stop_threshold": 0.0},
    {"skip_layers": "0,3", "num_draft": 3, "stop_threshold": 0.0},
    {"skip_layers": "alternate", "stop_threshold": 0.3},
]


@pytest.fixture(scope="module")
def deep(tiny) -> LoadedModel:
    """A random 4-layer Llama with the tiny tokenizer."""
    model = make_model(len(tiny.tokenizer), layers=4, eos=tiny.tokenizer.eos_token_id)
    return LoadedModel(model, tiny.tokenizer, {"spec": "tiny4", "dtype": "float32"})


def create(target: LoadedModel, options: dict, sampler: Sampler | None = None):
    return METHODS.get("layerskip").create(target, sampler, options)


@pytest.mark.parametrize("options", SETTINGS, ids=[o["skip_layers"] for o in SETTINGS])
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_lossless_equals_ar(deep, options, max_new):
    assert_equals_ar(create(deep, options), deep, PROMPTS, max_new, str(options))


@pytest.mark.parametrize("skip", ["0", "1,3", "2"])
def test_lossless_on_mixed_sliding_and_full_layers(tiny, skip):
    """Gemma 3 (sliding, full, sliding, full; window 8): skipping either kind keeps each kept layer's mask right."""
    target = LoadedModel(gemma3(len(tiny.tokenizer)), tiny.tokenizer, {"spec": "tiny-gemma3"})
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    expected = Autoregressive(target, None).generate(ids, StopRule(40), Timer()).tokens
    got = create(target, {"skip_layers": skip, "stop_threshold": 0.0}).generate(ids, StopRule(40), Timer())
    assert got.tokens == expected


def test_eos_inside_accepted_block(deep):
    ids = deep.tokenizer(PROMPTS[0])["input_ids"]
    free = Autoregressive(deep, None).generate(ids, StopRule(40), Timer()).tokens
    stop = StopRule(40, frozenset({free[12]}))
    got = create(deep, {"skip_layers": "none", "stop_threshold": 0.0}).generate(ids, stop, Timer())
    assert got.tokens == free[: free.index(free[12]) + 1]


def test_skipping_no_layer_accepts_every_draft(deep):
    method = create(deep, {"skip_layers": "none", "num_draft": 5, "stop_threshold": 0.0})
    got = method.generate(deep.tokenizer(PROMPTS[2])["input_ids"], StopRule(40), Timer())
    assert got.drafted[0] == 5 and all(a == d + 1 for a, d in zip(got.accepted, got.drafted, strict=True))
    assert got.target_forwards == 7 and got.draft_forwards > 0


def test_target_forward_stays_the_full_model(deep):
    ids = torch.tensor([deep.tokenizer(PROMPTS[1])["input_ids"]])
    layers = list(deep.model.model.layers)
    with torch.inference_mode():
        before = deep.model(ids).logits
        method = create(deep, {"skip_layers": "1-2"})
        method.generate(ids[0].tolist(), StopRule(20), Timer())
        after = deep.model(ids).logits
        draft = method.view.model(ids).logits
    assert list(deep.model.model.layers) == layers and not any(isinstance(m, Skipped) for m in deep.model.modules())
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    assert (draft - before).abs().max() > 1e-2  # the view really skips layers
    view_layers = method.view.model.model.layers
    assert [isinstance(m, Skipped) for m in view_layers] == [False, True, True, False]
    assert view_layers[0] is layers[0] and method.view.model.lm_head.weight is deep.model.lm_head.weight


def test_draft_cache_after_rollback_equals_a_fresh_run(deep):
    """After every rejection the drafter's next-token logits equal the skip view run afresh on the committed
    context, and its cache holds the kept layers only, as long as its token record."""
    method = create(deep, {"skip_layers": "1-2", "stop_threshold": 0.0, "num_draft": 4})
    kept = [0, 3]
    checked = []

    class Checked(LayerSkipDrafter):
        def propose(self, context, budget):
            rolled_back = self.cached[: len(context)] != context[: len(self.cached)]
            first = []
            forward = self._forward
            self._forward = lambda ids: first.append(forward(ids)) or first[-1]
            draft = super().propose(context, budget)
            del self._forward
            if rolled_back:
                with torch.inference_mode():
                    fresh = method.view.model(torch.tensor([context]), past_key_values=SkipCache(self.model, kept))
                torch.testing.assert_close(first[0], fresh.logits[0, -1], atol=1e-5, rtol=1e-5)
                checked.append(len(context))
            assert self.cached == context + draft.tokens[:-1]
            assert len(self.cache.layers) == 2
            assert all(layer.keys.shape[-2] == len(self.cached) for layer in self.cache.layers)
            return draft

    drafter = Checked(method.view, kept, 4, 0.0, None)
    ids = deep.tokenizer(PROMPTS[0])["input_ids"]
    result = verify_loop(deep.model, ids, StopRule(30), Timer(), drafter)
    expected = Autoregressive(deep, None).generate(ids, StopRule(30), Timer()).tokens
    assert result.tokens == expected
    assert len(checked) >= 3  # several rejections happened and were checked


def test_sampling_matches_target_distribution():
    target = make_model(VOCAB, seed=3, layers=3, eos=None)
    with torch.no_grad():  # flatten the lm head so the model is uncertain
        target.lm_head.weight.mul_(0.3)
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3], 3, 2000
    exact = exact_distribution(target, prompt, steps, sampler)
    view = skip_view(target, (0,))
    assert total_variation(exact, exact_distribution(view, prompt, steps, sampler)) > 0.2  # the draft alone is caught
    loaded = LoadedModel(view, None, {})
    got = empirical(lambda: LayerSkipDrafter(loaded, [1, 2], 2, 0.25, sampler), target, prompt, steps, sampler, n)
    assert not chi_square_rejects(got, exact, n)

    class AcceptAll(LayerSkipDrafter):  # a broken rule: draft probabilities that make every token look right
        def propose(self, context, budget):
            d = super().propose(context, budget)
            return Draft.chain(d.tokens, torch.full((len(d.tokens), VOCAB), 1e-9))

    broken = empirical(lambda: AcceptAll(loaded, [1, 2], 2, 0.25, sampler), target, prompt, steps, sampler, 1000)
    assert chi_square_rejects(broken, exact, 1000)


@pytest.fixture
def calibration(tmp_path, monkeypatch):
    """A data folder with a tiny calibration corpus and an empty model cache, both under tmp_path."""
    corpus = tmp_path / "data" / "tiny_corpus"
    corpus.mkdir(parents=True)
    story = "Once upon a time there was a little fox. The fox liked to jump over the lazy dog every day. " * 2
    (corpus / "tinystories_sample.txt").write_text(f"Title\n\n{story}\n\n{story}{story}\n")
    (corpus / "tinyshakespeare.txt").write_text("First Citizen:\n" + "Before we proceed any further, hear me. " * 4)
    monkeypatch.setenv("DECODEBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_auto_searches_once_and_caches(deep, calibration, monkeypatch):
    method = create(deep, {"skip_layers": "auto"})
    path = calibration / "cache" / "layerskip" / "tiny4-float32.json"
    record = json.loads(path.read_text())
    assert tuple(record["skip"]) == method.resolved_skip and method.resolved_skip in layerskip_search.candidates(4)
    assert [tuple(c["skip"]) for c in record["candidates"]] == [(1,), (2,), (1, 2)]
    assert record["prompts"] == 3 and record["ar_tokens_per_s"] > 0 and record["settings"]["num_draft"] == 12
    assert "$DECODEBENCH_DATA/tiny_corpus/tinystories_sample.txt" in record["calibration"]
    best = max(record["candidates"], key=lambda c: c["tokens_per_s"])
    assert best["skip"] == record["skip"]
    manifest = method.manifest()
    assert manifest["skip_layers"] == record["skip"] and manifest["search"]["cache"] == "tiny4-float32.json"

    def no_search(*args):
        raise AssertionError("searched again")

    monkeypatch.setenv("DECODEBENCH_DATA", str(calibration / "missing"))  # the cache needs no data
    monkeypatch.setattr(layerskip_search, "search", no_search)
    again = create(deep, {"skip_layers": "auto"})
    assert again.resolved_skip == method.resolved_skip
    ids = deep.tokenizer(PROMPTS[0])["input_ids"]
    expected = Autoregressive(deep, None).generate(ids, StopRule(20), Timer()).tokens
    assert again.generate(ids, StopRule(20), Timer()).tokens == expected


def test_auto_without_calibration_data_refuses(deep, calibration, monkeypatch):
    monkeypatch.setenv("DECODEBENCH_DATA", str(calibration / "missing"))
    with pytest.raises(BenchError, match="needs calibration text from"):
        create(deep, {"skip_layers": "auto"})
    monkeypatch.delenv("DECODEBENCH_DATA")
    with pytest.raises(BenchError, match="not set"):
        create(deep, {"skip_layers": "auto"})


def test_manifest_records_the_resolved_set(deep):
    assert create(deep, {}).manifest() == {"skip_layers": [1], "layers": 4}  # alternate on 4 layers
    assert create(deep, {"skip_layers": "1-2"}).manifest()["skip_layers"] == [1, 2]


def test_skip_sets_parse():
    assert parse_skip("1,4-6, 9") == (1, 4, 5, 6, 9)
    assert parse_skip("3,3") == (3,) and parse_skip("None") == () and parse_skip("auto") == "auto"
    assert alternate(30) == tuple(range(1, 29, 2)) and alternate(2) == ()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"skip_layers": "x"}, "'x' is not a layer index"),
        ({"skip_layers": ""}, "'' is not a layer index"),
        ({"skip_layers": "1,,2"}, "is not a layer index"),
        ({"skip_layers": "-1"}, "is not a layer index"),
        ({"skip_layers": "3-1"}, "runs backwards"),
        ({"skip_layers": "4"}, r"layer 4 does not exist \(the model has layers 0-3\)"),
        ({"skip_layers": "0-3"}, "skips all 4 layers"),
        ({"num_draft": 0}, "--num-draft must be at least 1"),
        ({"stop_threshold": 1.5}, "--stop-threshold must be at most 1.0"),
    ],
)
def test_bad_values_are_refused(deep, options, message):
    with pytest.raises(BenchError, match=message):
        create(deep, options)


def test_auto_needs_three_layers(tiny, calibration):
    with pytest.raises(BenchError, match="at least 3 decoder layers"):
        create(tiny, {"skip_layers": "auto"})


def test_max_step_tokens(deep):
    assert create(deep, {}).max_step_tokens() == 13 and create(deep, {"num_draft": 4}).max_step_tokens() == 5
