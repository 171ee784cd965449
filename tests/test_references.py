"""Faithful and fair references: prompt lookup's match rules (transformers' and Saxena's earliest match by
default), `pld` and `hf-pld` like for like, `hf-assisted` with speculative's draft-length policy and no state
left behind, and the cap on `speculative --adaptive`."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

from bench.report import settings_label
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods import speculative
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import StopRule
from methods.pld import MATCH_RULES, PromptLookupDrafter
from tests.conftest import make_model

EOS = 0  # the EOS id of the hand-made contexts
PROMPTS = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\ndef add(",
    "Write a poem about the sea and the sky",
]


def drafted(context, match, max_ngram=3, candidates=10, budget=100, eos=(EOS,)):
    draft = PromptLookupDrafter(max_ngram, candidates, match, eos).propose(context, budget)
    return None if draft is None else draft.tokens


# --- the match rules on hand-made contexts --------------------------------------------------------------


def test_period_one_loop_earliest_drafts_all_candidates_latest_one():
    context = [5, 6] + [7] * 20
    assert drafted(context, "earliest") == [7] * 10
    assert drafted(context, "longest") == [7] * 10
    assert drafted(context, "latest") == [7]


def test_period_three_loop_earliest_drafts_all_candidates_latest_the_period():
    context = [9] + [1, 2, 3] * 6
    assert drafted(context, "earliest") == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert drafted(context, "longest") == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    assert drafted(context, "latest") == [1, 2, 3]
    assert drafted(context, "earliest", candidates=4) == [1, 2, 3, 1]
    assert drafted(context, "earliest", budget=2) == [1, 2]


def test_continuation_stops_at_the_end_of_the_context_and_larger_ngrams_win():
    assert drafted([1, 2, 3, 4, 5, 1, 2], "earliest") == [3, 4, 5, 1, 2]  # 2-gram (1, 2): 5 tokens to the end
    # the 3-gram (5, 1, 2) occurs once, later than the 1-gram (2)'s earliest occurrence: the 3-gram decides
    context = [1, 2, 8, 5, 1, 2, 9, 7, 5, 1, 2]
    for match in MATCH_RULES:
        assert drafted(context, match) == [9, 7, 5, 1, 2]
    assert drafted([1, 2, 3, 4], "earliest") is None  # no earlier occurrence: an autoregressive step
    assert drafted([1, 2, 1, 3, 1], "earliest", max_ngram=1) == [2, 1, 3, 1]


def test_longest_ties_go_to_the_earliest():
    context = [1, 2, 3, 4, 1, 5, 6, 7, 1]
    assert drafted(context, "longest", max_ngram=1, candidates=3) == [2, 3, 4]
    assert drafted(context, "latest", max_ngram=1, candidates=3) == [5, 6, 7]


# the suffix 3-gram (3, 7, 4) occurs nowhere else; the 2-gram (7, 4) at 0, 3 and 11: their continuations start
# with EOS, run 10 tokens EOS-free, and hit EOS after 2 tokens
EOS_CONTEXT = [7, 4, EOS, 7, 4, 8, 9, 1, 2, 3, 5, 7, 4, 5, 6, EOS, 3, 7, 4]


def test_drafts_are_cut_at_their_first_eos():
    # earliest, as transformers: the earliest occurrence is chosen first, then cut; nothing left: no draft
    assert drafted(EOS_CONTEXT, "earliest") is None
    assert drafted(EOS_CONTEXT, "earliest", eos=()) == [EOS, 7, 4, 8, 9, 1, 2, 3, 5, 7]
    assert drafted(EOS_CONTEXT, "latest") == [5, 6]
    assert drafted(EOS_CONTEXT, "latest", eos=()) == [5, 6, EOS, 3, 7, 4]
    assert drafted(EOS_CONTEXT, "longest") == [8, 9, 1, 2, 3, 5, 7, 4, 5, 6]  # the longest after the cut
    assert drafted(EOS_CONTEXT, "longest", eos=(EOS, 99)) == [8, 9, 1, 2, 3, 5, 7, 4, 5, 6]


def test_transformers_prompt_lookup_drafts_as_earliest():
    """Our `earliest` against transformers' own candidate generator, on the hand-made contexts."""
    contexts = [[5, 6] + [7] * 20, [9] + [1, 2, 3] * 6, [1, 2, 3, 4, 5, 1, 2], [1, 2, 8, 5, 1, 2, 9, 7, 5, 1, 2]]
    for context in [*contexts, EOS_CONTEXT]:
        reference = PromptLookupCandidateGenerator(torch.tensor([EOS]), 10, 3, max_length=1000)
        ids, _ = reference.get_candidates(torch.tensor([context]))
        expected = ids[0, len(context) :].tolist() or None
        assert drafted(context, "earliest") == expected, context


def test_unknown_match_rule(tiny):
    with pytest.raises(BenchError, match="--match must be one of earliest, latest, longest"):
        METHODS.get("pld").create(tiny, None, {"match": "first"})
    with pytest.raises(BenchError, match="--match must be one of earliest"):
        METHODS.get("hf-pld").create(tiny, None, {"match": "latest"})


# --- pld lossless and like for like with hf-pld -------------------------------------------------------------


def prompts(tokenizer) -> list[list[int]]:
    chat = [{"role": "user", "content": "the quick brown fox"}, {"role": "assistant", "content": "the lazy dog"}]
    chat += [{"role": "user", "content": "the quick brown fox"}]  # EOS ids inside the prompt
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return [
        *ids,
        tokenizer(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))["input_ids"],
    ]


def test_chat_prompt_holds_eos(tiny):
    assert set(prompts(tiny.tokenizer)[-1]) & set(tiny.eos_ids())


@pytest.mark.parametrize("match", MATCH_RULES)
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_pld_equals_ar_for_every_match_rule(tiny, match, max_new):
    method = METHODS.get("pld").create(tiny, None, {"match": match})
    drafts = 0
    for ids in prompts(tiny.tokenizer):
        for eos in (frozenset(), frozenset(tiny.eos_ids())):
            expected = Autoregressive(tiny, None).generate(ids, StopRule(max_new, eos), Timer()).tokens
            got = method.generate(ids, StopRule(max_new, eos), Timer())
            assert got.tokens == expected, f"pld match={match} diverged on {ids}"
            assert sum(got.accepted) == len(got.tokens)
            drafts += len(got.tokens) - got.target_forwards
    if max_new == 40:
        assert drafts > 0  # the rules were exercised: several tokens committed per forward somewhere


def test_pld_and_hf_pld_share_the_reference_defaults():
    pld, hf = METHODS.get("pld").Options(), METHODS.get("hf-pld").Options()
    defaults = {"max_ngram": 3, "num_candidates": 10, "match": "earliest", "budget": "fixed"}
    assert pld.as_dict() == hf.as_dict() == defaults
    labels = [settings_label({"method": m, "options": o.as_dict()}) for m, o in (("pld", pld), ("hf-pld", hf))]
    assert labels[0] == labels[1] == "max_ngram=3 candidates=10 match=earliest budget=fixed"
    with pytest.raises(BenchError, match="--budget must be fixed for hf-pld"):
        METHODS.get("hf-pld").Options.resolve({"budget": "auto"}, "hf-pld")


def test_pld_drafts_as_hf_pld(tiny):
    """Same defaults, same rule: every forward commits as many tokens in ours as in transformers'."""
    eos = frozenset(tiny.eos_ids())
    ours, reference = METHODS.get("pld").create(tiny, None), METHODS.get("hf-pld").create(tiny, None)
    for ids in prompts(tiny.tokenizer):
        got, expected = (m.generate(ids, StopRule(40, eos), Timer()) for m in (ours, reference))
        assert got.tokens == expected.tokens
        assert got.target_forwards == expected.target_forwards
        assert got.accepted == expected.accepted


# --- hf-assisted: speculative's policy, nothing left behind ----------------------------------------------


@pytest.fixture(scope="module")
def draft(tiny) -> LoadedModel:
    """A different random model with the same tokenizer (low acceptance)."""
    return LoadedModel(make_model(len(tiny.tokenizer), seed=1, layers=1), tiny.tokenizer, {"spec": "tiny-draft"})


@pytest.fixture
def twin(tiny) -> LoadedModel:
    """A copy of the target as a separate module (every draft token accepted; forwards counted apart)."""
    return LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, {"spec": "tiny-twin"})


def test_hf_assisted_defaults_to_speculatives_policy():
    assert METHODS.get("hf-assisted").Options().as_dict() == {"num_draft": 5, "schedule": "constant"}
    assert METHODS.get("speculative").Options().num_draft == 5


def test_hf_assisted_constant_drafts_as_speculative(tiny, twin):
    ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    stop = StopRule(40)
    ours = METHODS.get("speculative").create(tiny, None, {"num_draft": 3}, draft=twin).generate(ids, stop, Timer())
    runs = {
        schedule: METHODS.get("hf-assisted").create(tiny, None, {"num_draft": 3, "schedule": schedule}, draft=twin)
        for schedule in ("constant", "transformers")
    }
    constant, own = (m.generate(ids, stop, Timer()) for m in runs.values())
    assert constant.tokens == own.tokens == ours.tokens
    # every step drafts k=3 and commits them + 1 (transformers' first step holds the prefill, ours does not)
    assert set(constant.accepted) == set(ours.accepted[1:-1]) == {4}
    # transformers' confidence early exit (threshold 0.4) cuts drafts of this low-confidence model short
    assert own.target_forwards > constant.target_forwards


def generation_state(model) -> dict:
    return model.generation_config.to_dict()


@pytest.mark.parametrize("schedule", ["constant", "transformers"])
@pytest.mark.parametrize("draft_schedule", [None, "heuristic"])
def test_hf_assisted_leaves_no_state_and_repeats(tiny, twin, schedule, draft_schedule):
    if draft_schedule:  # transformers writes num_assistant_tokens back to the draft after a "heuristic" run
        twin.model.generation_config.num_assistant_tokens_schedule = draft_schedule
    config = twin.model.generation_config
    before, target_before = generation_state(twin.model), generation_state(tiny.model)
    method = METHODS.get("hf-assisted").create(tiny, None, {"num_draft": 3, "schedule": schedule}, draft=twin)
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    first, second = (method.generate(ids, StopRule(40), Timer()) for _ in range(2))
    assert twin.model.generation_config is config
    assert generation_state(twin.model) == before
    assert generation_state(tiny.model) == target_before
    assert first.tokens == second.tokens
    assert first.accepted == second.accepted
    assert (first.target_forwards, first.draft_forwards) == (second.target_forwards, second.draft_forwards)


def test_hf_assisted_restores_the_draft_config_when_generate_fails(tiny, draft, monkeypatch):
    config = draft.model.generation_config
    method = METHODS.get("hf-assisted").create(tiny, None, draft=draft)

    def broken(*args, **kwargs):
        assert draft.model.generation_config is not config  # the run's own copy
        assert draft.model.generation_config.assistant_confidence_threshold == 0.0
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny.model, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        method.generate(tiny.tokenizer(PROMPTS[0])["input_ids"], StopRule(8), Timer())
    assert draft.model.generation_config is config


# --- speculative --adaptive: k within [1, max_draft] ------------------------------------------------------


@pytest.fixture
def recorded_k(monkeypatch) -> list[tuple[int, int]]:
    """(draft length, k after observing it) for every step of every DraftModelDrafter the method builds."""
    steps: list[tuple[int, int]] = []

    class Recording(speculative.DraftModelDrafter):
        def observe(self, draft, predicted, accepted):
            super().observe(draft, predicted, accepted)
            steps.append((len(draft.tokens), self.k))

    monkeypatch.setattr(speculative, "DraftModelDrafter", Recording)
    return steps


@pytest.mark.parametrize(("max_draft", "cap"), [(5, 5), (10, 10), (100, None)])
def test_adaptive_k_never_exceeds_max_draft(tiny, twin, recorded_k, max_draft, cap):
    options = {"num_draft": 2, "adaptive": True, "max_draft": max_draft}
    method = METHODS.get("speculative").create(tiny, None, options, draft=twin)
    for ids in prompts(tiny.tokenizer)[:2]:
        expected = Autoregressive(tiny, None).generate(ids, StopRule(60), Timer()).tokens
        assert method.generate(ids, StopRule(60), Timer()).tokens == expected
    lengths, ks = zip(*recorded_k, strict=True)
    if cap is None:  # every draft accepted: without a binding cap k keeps growing by 2
        assert max(ks) > 10
    else:
        assert max(ks) == cap and max(lengths) <= cap  # reached, never passed
    assert min(ks) >= 1


def test_adaptive_k_stays_at_least_one(tiny, draft, recorded_k):
    method = METHODS.get("speculative").create(tiny, None, {"num_draft": 3, "adaptive": True}, draft=draft)
    method.generate(tiny.tokenizer(PROMPTS[2])["input_ids"], StopRule(40), Timer())
    ks = [k for _, k in recorded_k]
    assert min(ks) == 1 and max(ks) <= 10


def test_max_draft_is_recorded_and_checked(tiny, draft):
    defaults = {"num_draft": 5, "adaptive": False, "max_draft": 10, "budget": "fixed", "tree": "none",
                "branching": "3,2,1,1", "depth": 5, "children": 4, "frontier": 4, "max_nodes": 20}  # fmt: skip
    assert METHODS.get("speculative").Options().as_dict() == defaults
    with pytest.raises(BenchError, match="--num-draft .* must be at most --max-draft"):
        METHODS.get("speculative").create(tiny, None, {"num_draft": 6, "adaptive": True, "max_draft": 5}, draft)
    with pytest.raises(BenchError, match="--max-draft must be at least 1"):
        METHODS.get("speculative").create(tiny, None, {"adaptive": True, "max_draft": 0}, draft)
    fixed = METHODS.get("speculative").create(tiny, None, {"num_draft": 16}, draft)  # the cap is for --adaptive
    assert fixed.drafter().k == 16
