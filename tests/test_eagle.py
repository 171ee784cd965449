"""`eagle` / `eagle2`: lossless against `ar` (a random and a briefly trained draft layer; the trained one accepts
several tokens per step), the tree's children are the draft's top-k of a cache-free recompute, the draft cache holds
only real feature pairs, sampling keeps the target's distribution, the reference's layout round-trips, bad inputs
are refused in one line, and the reference's loss trains the layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Sampler, StopRule, verify_loop
from methods.draft_tree import TreeShape
from methods.draft_vocab import SubsetHead
from methods.eagle import CHOICES, SIZES, ChoicesDrafter, ChoiceTree, EagleDrafter, PairCache
from methods.eagle_model import causal_mask, eagle_loss, load_layer, new_layer, save_layer
from methods.kvcache import new_cache
from tests.conftest import CORPUS, make_model
from tests.test_methods import (
    PROMPTS,
    VOCAB,
    NoTokenizer,
    assert_equals_ar,
    chi_square_rejects,
    empirical,
    exact_distribution,
    small_pair,  # noqa: F401  (a fixture)
)
from tests.test_spec_tree import parents_of

# the state dict keys of SafeAILab/EAGLE's draft `Model` (eagle/model/cnets.py), one decoder layer
REFERENCE_KEYS = {"embed_tokens.weight", "fc.weight", "fc.bias", "layers.0.post_attention_layernorm.weight",
                  *(f"layers.0.self_attn.{p}_proj.weight" for p in "qkvo"),
                  *(f"layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down"))}  # fmt: skip
SETTINGS = [
    ("eagle", {}),
    ("eagle", {"tree": "chain-5"}),
    ("eagle2", {}),
    ("eagle2", {"tree": "cpu-10"}),
    ("eagle2", {"tree": "cpu-20", "max_nodes": 5, "depth": 3}),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def self_distilled(model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, tokens, mask) as the training cache holds them: prompts + the target's greedy answers."""
    seqs, masks = [], []
    for text in CORPUS + PROMPTS:
        ids = model.tokenizer(text)["input_ids"][:24]
        answer = Autoregressive(model, None).generate(ids, StopRule(40), Timer()).tokens
        seqs.append(ids + answer)
        masks.append([False] * (len(ids) - 1) + [True] * len(answer) + [False])
    n = max(map(len, seqs))
    tokens = torch.tensor([s + [0] * (n - len(s)) for s in seqs])
    mask = torch.tensor([m + [False] * (n - len(m)) for m in masks])
    with torch.no_grad():
        hidden = model.model.get_decoder()(tokens).last_hidden_state
    return hidden, tokens, mask


@pytest.fixture(scope="module")
def random_dir(tiny, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("eagle-random")
    save_layer(new_layer(tiny), folder, {})
    return folder


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> tuple[Path, list[dict[str, float]]]:
    """A layer trained 60 steps with eagle_loss on the tiny model's own greedy outputs; its metrics per step."""
    torch.manual_seed(0)
    layer = new_layer(tiny).train()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=3e-3, betas=(0.9, 0.95))
    batch, history = self_distilled(tiny), []
    for _ in range(60):
        loss, metrics = eagle_loss(layer, tiny, *batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(metrics)
    folder = tmp_path_factory.mktemp("eagle-trained")
    save_layer(layer.eval(), folder, {"target": {"sha256": "ab" * 32}, "steps": 60})
    return folder, history


def create(tiny, folder: Path, name: str, options: dict | None = None, sampler=None):
    return METHODS.get(name).create(tiny, sampler, {"draft_heads": str(folder), **(options or {})})


@pytest.mark.parametrize("which", ["random", "trained"])
@pytest.mark.parametrize(("name", "options"), SETTINGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SETTINGS)])
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_lossless_equals_ar(tiny, random_dir, trained, which, name, options, max_new):
    folder = random_dir if which == "random" else trained[0]
    assert_equals_ar(create(tiny, folder, name, options), tiny, PROMPTS, max_new, f"{name} {options} {which}")


def mean_tau(tiny, folder: Path, name: str) -> float:
    method = create(tiny, folder, name)
    taus = []
    for prompt in PROMPTS:
        got = method.generate(tiny.tokenizer(prompt)["input_ids"], StopRule(40), Timer())
        taus.append(len(got.tokens) / len(got.accepted))
    return sum(taus) / len(taus)


def test_trained_layer_accepts_several_tokens_per_step(tiny, random_dir, trained):
    for name in ("eagle", "eagle2"):
        assert mean_tau(tiny, trained[0], name) > 2.0 > 1.2 > mean_tau(tiny, random_dir, name)


def test_loss_decreases(trained):
    history = trained[1]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and history[-1]["vloss"] < 0.3 * history[0]["vloss"]
    assert history[-1]["acc"] > 0.5 > 0.05 > history[0]["acc"]


def scratch(layer, tiny, context: list[int], path: list[int] = ()) -> torch.Tensor:
    """The draft output after `context` and then the tree `path`, recomputed without any cache: real pairs
    (target feature_t, token_{t+1}), then each path token paired with the draft output before it."""
    embed = tiny.model.get_input_embeddings()

    def run(features: torch.Tensor, tokens: list[int]) -> torch.Tensor:
        m = len(tokens)
        return layer(
            features, embed(torch.tensor([tokens])), torch.arange(m)[None], causal_mask(0, m, layer.dtype, "cpu")
        )

    with torch.inference_mode():
        features, tokens = tiny.model.get_decoder()(torch.tensor([context[:-1]])).last_hidden_state, context[1:]
        out = run(features, tokens)
        for token in path:
            features, tokens = torch.cat([features, out[:, -1:]], 1), tokens + [token]
            out = run(features, tokens)
    assert out.shape[1] == len(context) - 1 + len(path)
    return out[0, -1]


@pytest.mark.parametrize(("name", "options"), [("eagle", {}), ("eagle2", {"tree": "cpu-20"})])
def test_children_are_the_cache_free_draft_top_k(tiny, trained, name, options):
    """Each node's children are the top of the LM head on the draft output after its path (the parent's draft
    feature with the node's token at position = depth, seeing the real pairs and the ancestors), on a first step
    and on a later one that reuses the draft cache."""
    method = create(tiny, trained[0], name, options)
    drafter = method.drafter()
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    answer = Autoregressive(tiny, None).generate(ids, StopRule(6), Timer()).tokens
    with torch.inference_mode():
        full = tiny.model.get_decoder()(torch.tensor([ids + answer])).last_hidden_state[0]
        done = 0
        for context in (ids[:10], ids + answer):  # a first step, then one on the draft cache
            drafter.observe_hidden(full[done : len(context) - 1])
            done = len(context) - 1
            d = drafter.propose(context, 10)
            parents = parents_of(d)
            for node in [-1, *range(len(d.tokens))]:
                kids = [i for i, p in enumerate(parents) if p == node]
                path, up = [], node
                while up >= 0:
                    path, up = [d.tokens[up], *path], parents[up]
                if kids:
                    logits = tiny.model.get_output_embeddings()(scratch(method.layer, tiny, context, path))
                    assert [d.tokens[i] for i in kids] == logits.topk(len(kids)).indices.tolist()
    assert len(d.tokens) == (len(CHOICES["mc_sim_7b_63"]) if name == "eagle" else 20)


class Checked(ChoicesDrafter):
    """Checks, at every step, that the draft cache holds exactly the real pairs (a cache-free recompute)."""

    def __init__(self, features, choices, sampler, tiny):
        super().__init__(features, choices, sampler)
        self.tiny, self.checked = tiny, 0

    def propose(self, context, budget):
        draft = super().propose(context, budget)
        if self.chain.ready:
            chain = self.chain
            assert chain.cache.get_seq_length() == chain.pairs == len(context) - 1
            torch.testing.assert_close(chain.last, scratch(chain.model, self.tiny, context), atol=1e-4, rtol=1e-4)
            reference = new_cache(chain.model)
            m = len(context) - 1
            with torch.inference_mode():
                features = self.tiny.model.get_decoder()(torch.tensor([context[:-1]])).last_hidden_state
                embeds = chain.embed(torch.tensor([context[1:]]))
                chain.model(features, embeds, torch.arange(m)[None], causal_mask(0, m, torch.float32, "cpu"), reference)
            for ours, ref in zip(chain.cache.layers, reference.layers, strict=True):
                torch.testing.assert_close(ours.keys, ref.keys, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=1e-4)
            self.checked += 1
        return draft


def test_draft_cache_holds_only_real_pairs(tiny, trained):
    method = create(tiny, trained[0], "eagle", {"tree": "cpu-11"})
    ids = tiny.tokenizer(PROMPTS[1])["input_ids"]
    drafter = Checked(method.features(), ChoiceTree(CHOICES["cpu-11"]), None, tiny)
    result = verify_loop(tiny.model, ids, StopRule(30), Timer(), drafter)
    assert result.tokens == Autoregressive(tiny, None).generate(ids, StopRule(30), Timer()).tokens
    assert drafter.checked == len(result.accepted) - 1 > 3
    assert max(result.accepted) > 1 and min(result.accepted[1:]) == 1  # accepted and rejected trees


class TopK(ChoicesDrafter):
    """Broken: the draft's top-k children, claimed as draws from q."""

    def _children(self, logits, k):
        q = self.sampler.probs(logits)
        top = q.topk(min(k, VOCAB), dim=-1)
        return top.indices, top.values.log(), torch.ones(top.indices.shape, dtype=torch.bool), q


def test_sampling_matches_target_distribution(small_pair):  # noqa: F811
    """Children drawn without replacement with their recursive rows keep the target's distribution, for EAGLE-1's
    choices tree and EAGLE-2's dynamic tree, also when the draft sees only half the vocabulary (draft_vocab); the
    test catches top-k children passed off as samples."""
    target, _ = small_pair
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3], 4, 2000
    exact = exact_distribution(target, prompt, steps, sampler)
    torch.manual_seed(5)
    layer = new_layer(LoadedModel(target, NoTokenizer(), {}))
    choices = ChoiceTree([[0], [1], [2], [0, 0], [0, 1], [1, 0]])
    dynamic = TreeShape("dynamic", depth=2, children=3, frontier=2, max_nodes=4)
    subset = SubsetHead(target.get_output_embeddings(), torch.arange(0, VOCAB, 2))  # a reduced draft vocabulary
    makers = [
        lambda: ChoicesDrafter(PairCache(layer, target), choices, sampler),
        lambda: EagleDrafter(PairCache(layer, target), dynamic, sampler),
        lambda: EagleDrafter(PairCache(layer, target, subset), dynamic, sampler),
    ]
    for make in makers:
        assert not chi_square_rejects(empirical(make, target, prompt, steps, sampler, n), exact, n)
    broken = empirical(lambda: TopK(PairCache(layer, target), choices, sampler), target, prompt, 3, sampler, n)
    assert chi_square_rejects(broken, exact_distribution(target, prompt, 3, sampler), n)


def test_presets_follow_the_reference(tiny, random_dir):
    for paths in CHOICES.values():
        tree = ChoiceTree(paths)
        assert {tuple(p[:-1]) for p in paths} - {tuple(p) for p in paths} == {()}  # every path's parent listed
        assert all((tree.child[i, : tree.count[i]] >= 0).all() for i in range(len(tree.count)))  # ranks 0..r-1
    assert ChoiceTree(CHOICES["mc_sim_7b_63"]).shape().branching == (4, 3, 3, 3, 2)
    assert create(tiny, random_dir, "eagle").max_step_tokens() == 1 + 25
    method = create(tiny, random_dir, "eagle2")
    assert method.max_step_tokens() == 59 and method.options.shape() == SIZES["reference"]  # total_token=59
    assert SIZES["reference"].depth == 5 + 1 and SIZES["reference"].children == SIZES["reference"].frontier == 10
    drafter = create(tiny, random_dir, "eagle").drafter()
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    assert drafter.propose(ids, 10) is None  # no target feature yet: an autoregressive step
    with torch.inference_mode():
        drafter.observe_hidden(tiny.model.get_decoder()(torch.tensor([ids[:-1]])).last_hidden_state[0])
    d = drafter.propose(ids, 10)
    assert sorted(d.positions) == sorted(len(p) for p in CHOICES["mc_sim_7b_63"])
    assert drafter.draft_forwards == 1 + 4  # the pairs, then one forward per level of nodes with children


def test_reference_layout_round_trip(tiny, trained, tmp_path):
    folder = trained[0]
    state = load_file(str(folder / "model.safetensors"))
    assert set(state) == REFERENCE_KEYS
    torch.testing.assert_close(state["embed_tokens.weight"], tiny.model.get_input_embeddings().weight.detach())
    config = json.loads((folder / "config.json").read_text())
    t = tiny.model.config
    assert config["num_hidden_layers"] == 1 and config["bias"] is True and config["decodebench"]["steps"] == 60
    assert [config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "rope_theta")] == [
        t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.rope_parameters["rope_theta"]]  # fmt: skip
    target = LoadedModel(tiny.model, tiny.tokenizer, {"sha256": "ab" * 32})
    layer = load_layer(str(folder), target)
    for key, value in layer.state_dict().items():
        torch.testing.assert_close(value, state[key])
    # the published layout: pytorch_model.bin and a config without our keys
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "decodebench"}))
    torch.save(state, tmp_path / "pytorch_model.bin")
    again = load_layer(str(tmp_path), tiny)
    for key, value in again.state_dict().items():
        torch.testing.assert_close(value, state[key])


def test_refusals(tiny, random_dir, trained, tmp_path, monkeypatch):
    other = LoadedModel(make_model(len(tiny.tokenizer), seed=3, layers=1), tiny.tokenizer, {})
    with torch.no_grad():
        other.model.resize_token_embeddings(200)
    save_layer(new_layer(other), tmp_path / "other", {})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((random_dir / "config.json").read_text())
    (tmp_path / "medusa").mkdir()
    (tmp_path / "medusa" / "config.json").write_text((random_dir / "config.json").read_text())
    torch.save({"0.0.linear.weight": torch.zeros(64, 64)}, tmp_path / "medusa" / "pytorch_model.bin")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cases = [
        ("eagle", {}, "eagle needs a draft layer: --draft-heads"),
        ("eagle2", {"draft_heads": str(tmp_path / "nope")}, "no such folder"),
        ("eagle2", {"draft_heads": "someone/EAGLE-nothing"}, "cannot download from the Hugging Face hub"),
        ("eagle", {"draft_heads": str(tmp_path / "bad")}, "missing or malformed config.json"),
        ("eagle", {"draft_heads": str(tmp_path / "empty")}, "no pytorch_model.bin or model.safetensors"),
        ("eagle", {"draft_heads": str(tmp_path / "other")}, "vocabulary 200; the target has 64 and 320"),
        ("eagle", {"draft_heads": str(tmp_path / "medusa")}, "not SafeAILab/EAGLE's draft layer \\(missing: fc"),
        ("eagle", {"draft_heads": str(random_dir), "tree": "huge"}, "--tree must be one of mc_sim_7b_63"),
        ("eagle2", {"draft_heads": str(random_dir), "tree": "mc_sim_7b_63"}, "--tree must be one of reference"),
        ("eagle2", {"draft_heads": str(random_dir), "children": 0}, "--children must be at least 1"),
    ]
    for name, options, message in cases:
        with pytest.raises(BenchError, match=message) as caught:
            METHODS.get(name).create(tiny, None, options)
        assert "\n" not in str(caught.value)
    with pytest.raises(BenchError, match="was trained on another target"):
        load_layer(str(trained[0]), LoadedModel(tiny.model, tiny.tokenizer, {"sha256": "cd" * 32}))
    with pytest.raises(BenchError, match="does not support --compile"):
        create(tiny, random_dir, "eagle2").use_compiled(None)
