"""`--budget auto`: the draft length that maximises expected tokens per millisecond under the cost curve, lossless
(equal to `ar` greedy), degrading to AR steps where verification is too expensive, refused without a curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.profile import save
from core.costmodel import CostCurve, ProfileKey
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.budget import BudgetPolicy
from methods.decode import StopRule
from methods.lookahead_budget import LookaheadBudget
from tests.conftest import make_model
from tests.test_methods import PROMPTS, build

FLAT = {1: 10.0, 16: 10.0}  # verifying is free: draft as much as possible
STEEP = {1: 10.0, 2: 30.0, 16: 160.0}  # every extra query token costs more than an AR step


def _curve(cells: dict[int, float]) -> list[dict]:
    return [{"context": c, "q": q, "ms": ms, "backend": "aten"} for c in (10, 500) for q, ms in cells.items()]


@pytest.fixture(scope="module")
def draft_model(tiny) -> LoadedModel:
    return LoadedModel(make_model(len(tiny.tokenizer), seed=1, layers=1), tiny.tokenizer, {"spec": "tiny-draft"})


@pytest.fixture
def curves(tmp_path, monkeypatch):
    """Store cost curves for the tiny target and draft (as `bench profile` would); returns a setter."""
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))

    def put(target: dict[int, float], draft: dict[int, float] | None = None) -> None:
        for name, cells in (("tiny", target), ("tiny-draft", draft or {1: 1.0, 16: 1.0})):
            key = ProfileKey(name, "float32", "cpu", False, torch.get_num_threads())
            save(_curve(cells), key, {}, key.folder())

    return put


def test_policy_picks_the_cost_optimal_length_and_explores():
    flat = BudgetPolicy(CostCurve(_curve(FLAT)), max_k=5)
    for _ in range(50):
        flat.update(5, 5)  # every draft token accepted
    assert flat.choose(100, skipped=0) == 5
    steep = BudgetPolicy(CostCurve(_curve(STEEP)), max_k=5)
    assert steep.choose(100, skipped=0) == 0
    assert steep.choose(100, skipped=16) >= 1  # an exploring step after `explore` skipped ones
    costly_draft = BudgetPolicy(CostCurve(_curve(FLAT)), max_k=5, draft=CostCurve(_curve({1: 30.0, 16: 30.0})))
    for _ in range(50):
        costly_draft.update(5, 5)
    assert costly_draft.choose(100, skipped=0) == 0  # a draft token costs three target forwards
    steep.update(3, 1)
    assert steep.reached.tolist()[:3] == [1, 1, 0] and steep.taken.tolist()[:2] == [1, 0]


@pytest.mark.parametrize("cells", [FLAT, STEEP], ids=["flat", "steep"])
@pytest.mark.parametrize(("name", "options"), [("pld", {}), ("speculative", {"num_draft": 3}),
                                               ("speculative-self", {"num_draft": 4})])  # fmt: skip
def test_budget_auto_is_lossless_and_records_its_choices(tiny, draft_model, curves, cells, name, options):
    curves(cells)
    method = build(name, options | {"budget": "auto"}, tiny, draft_model)
    ar = build("ar", {}, tiny, draft_model)
    chosen = []
    for prompt in PROMPTS:
        ids = tiny.tokenizer(prompt)["input_ids"]
        got = method.generate(ids, StopRule(40), Timer())
        assert got.tokens == ar.generate(ids, StopRule(40), Timer()).tokens
        assert got.budget is not None and len(got.budget) <= got.target_forwards
        chosen += got.budget
    if cells is STEEP:
        assert np.mean(np.array(chosen) == 0) > 0.5  # mostly AR steps where verifying costs more than it saves
    elif name == "pld":
        assert max(chosen) == 10  # free verification, free drafts: the longest draft always pays
    elif name == "speculative-self":  # a draft token costs a target forward: drafting never pays
        assert set(chosen) <= {0, 1, 4} and np.mean(np.array(chosen) == 0) > 0.5


def test_budget_auto_without_a_curve_says_how_to_make_one(tiny, draft_model, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match="bench profile --model tiny"):
        build("pld", {"budget": "auto"}, tiny, draft_model)
    with pytest.raises(BenchError, match="choose one"):
        build("speculative", {"budget": "auto", "adaptive": True, "num_draft": 2}, tiny, draft_model)


LOOKAHEAD = [
    {"window": 3, "ngram": 3, "guess": 3},
    {"window": 4, "ngram": 4, "guess": 4, "prompt_ngrams": True, "commit_full": True},
    {"window": 3, "ngram": 5, "guess": 6, "prompt_ngrams": True, "share_prefixes": True},
]


@pytest.mark.parametrize("cells", [FLAT, STEEP], ids=["flat", "steep"])
@pytest.mark.parametrize("options", LOOKAHEAD, ids=range(len(LOOKAHEAD)))
def test_lookahead_budget_auto_is_lossless_and_follows_the_curve(tiny, draft_model, curves, cells, options):
    curves(cells)
    method = build("lookahead", options | {"budget": "auto"}, tiny, draft_model)
    ar = build("ar", {}, tiny, draft_model)
    steps, chosen = [], []
    for prompt in PROMPTS:
        ids = tiny.tokenizer(prompt)["input_ids"]
        got = method.generate(ids, StopRule(40), Timer())
        assert got.tokens == ar.generate(ids, StopRule(40), Timer()).tokens
        assert got.budget is not None and len(got.budget) <= got.target_forwards
        steps += got.step_tokens[1:-1]  # the last forward has no room for a draft
        chosen += got.budget
    ar_steps = np.mean(np.array(steps) == 1)
    if cells is STEEP:
        assert ar_steps > 0.7  # neither window nor guesses pay: AR steps, with an exploring step now and then
    else:
        assert ar_steps == 0 and max(chosen) >= 1  # free verification: the window always runs, guesses verified


def test_lookahead_policy_prices_guesses_and_the_window():
    policy = LookaheadBudget(CostCurve(_curve({1: 10.0, 4: 12.0, 16: 40.0})), max_guesses=3)
    assert policy.choose(100, [0], window_tokens=12) == (0, False)  # window: +0.5 token for 2.6x the cost
    for _ in range(20):
        policy.update([2, 0, 1], window=True, from_window=2)  # the first guess matches 2 tokens, and it came
    assert policy.matched[1:].tolist() == [40, 40, 40] and policy.window_tokens == 40  # from the window
    assert policy.choose(100, [0, 2, 4, 6], window_tokens=0) == (1, False)  # more guesses add nothing
    assert policy.choose(100, [0, 2, 4, 6], window_tokens=2)[1]  # a small window yielding 2 tokens a step pays
    assert not policy.choose(100, [0, 2, 4, 6], window_tokens=12)[1]  # a large one costs more than it yields
    slow = LookaheadBudget(CostCurve(_curve(STEEP)), max_guesses=3)
    picks = [slow.choose(100, [0, 2], window_tokens=4) for _ in range(17)]
    assert picks[:16] == [(0, False)] * 16 and picks[16] != (0, False)  # explores after 16 AR steps


def test_lookahead_budget_auto_without_a_curve_is_refused(tiny, draft_model, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))
    with pytest.raises(BenchError, match="bench profile --model tiny"):
        build("lookahead", {"budget": "auto"}, tiny, draft_model)
