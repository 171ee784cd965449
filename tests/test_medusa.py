"""Medusa: lossless greedy with random and trained heads, exact sampling (typical acceptance caught as lossy),
the reference's file layout both ways, the loss, the trees, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Sampler, StopRule
from methods.medusa import TREES, MedusaDrafter, MedusaTree
from methods.medusa_model import load_heads, medusa_loss, new_heads, save_heads
from tests.conftest import make_model
from tests.test_methods import (
    VOCAB,
    NoTokenizer,
    assert_equals_ar,
    chi_square_rejects,
    empirical,
    exact_distribution,
    total_variation,
)

PROMPTS = ["the quick brown fox jumps over", "Write a poem about the sea and", "def add(a, b):\n    return"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def random_heads(target: LoadedModel, heads: int = 3, layers: int = 1, seed: int = 0):
    """Heads initialised as the reference, then perturbed so they guess badly (some nodes right, most wrong)."""
    module = new_heads(target, medusa_num_heads=heads, medusa_num_layers=layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return module


def save_random(target, folder):
    save_heads(random_heads(target), folder, {})
    return folder


def medusa(target: LoadedModel, folder, sampler=None, **options):
    return METHODS.get("medusa").create(target, sampler, {"draft_heads": str(folder), **options})


@pytest.fixture(scope="module")
def trained(tiny):
    """3 heads trained with medusa_loss on the tiny model's own greedy continuations of PROMPTS; the losses."""
    sequences, masks = [], []
    for prompt in PROMPTS:
        ids = tiny.tokenizer(prompt)["input_ids"]
        answer = Autoregressive(tiny, None).generate(ids, StopRule(48), Timer()).tokens
        sequences.append(ids + answer)
        masks.append([len(ids) - 1 <= t < len(ids) + len(answer) - 1 for t in range(len(ids) + len(answer))])
    width = max(map(len, sequences))
    tokens = torch.tensor([s + [0] * (width - len(s)) for s in sequences])
    mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
    with torch.no_grad():
        hidden = tiny.model.get_decoder()(tokens).last_hidden_state
    heads = new_heads(tiny, medusa_num_heads=3)
    optimizer = torch.optim.Adam(heads.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, metrics = medusa_loss(heads, tiny, hidden, tokens, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["loss"])
    return heads.eval(), losses, metrics


# --- losslessness --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree", ["mc_sim_7b_63", "mc8", "vicuna_7b_stage2"])
def test_random_heads_equal_ar(tiny, tmp_path, tree):
    save_heads(random_heads(tiny, heads=4), tmp_path, {})
    method = medusa(tiny, tmp_path, medusa_tree=tree)
    for max_new in (1, 2, 7, 40):
        assert_equals_ar(method, tiny, PROMPTS, max_new, f"medusa {tree}")


def test_trained_heads_equal_ar_and_commit_several_tokens(tiny, tmp_path, trained):
    heads, _, metrics = trained
    assert metrics["medusa0_top1"] > 0.8  # the heads learned the continuations
    save_heads(heads, tmp_path, {})
    method = medusa(tiny, tmp_path)
    assert_equals_ar(method, tiny, PROMPTS, 40, "medusa trained")
    forwards = sum(method.generate(tiny.tokenizer(p)["input_ids"], StopRule(40), Timer()).target_forwards
                   for p in PROMPTS)  # fmt: skip
    tau = 40 * len(PROMPTS) / forwards
    assert tau > 3.0, tau  # 3 heads: at most 4 tokens per forward (3.6 here; 2.2 from a wrong hidden row)
    untrained = medusa(tiny, save_random(tiny, tmp_path / "random"))
    random_forwards = sum(untrained.generate(tiny.tokenizer(p)["input_ids"], StopRule(40), Timer()).target_forwards
                          for p in PROMPTS)  # fmt: skip
    assert forwards < random_forwards


def test_loss_decreases(trained):
    _, losses, _ = trained
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    assert losses[5] < losses[0]


def test_loss_reads_only_answer_positions(tiny):
    heads = new_heads(tiny, medusa_num_heads=2)
    hidden, tokens = torch.randn(1, 10, 64), torch.randint(0, 320, (1, 10))
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 6] = True  # token 7 is the only answer token: head 0 reads position 5, head 1 position 4
    _, metrics = medusa_loss(heads, tiny, hidden, tokens, mask)
    for k, t in ((0, 5), (1, 4)):
        logits = heads.medusa_head[k](hidden[0, t])
        expected = torch.nn.functional.cross_entropy(logits[None], tokens[0, 7:8])
        assert metrics[f"medusa{k}_loss"] == pytest.approx(float(expected), rel=1e-5)


# --- sampling ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    model = make_model(VOCAB, seed=3, layers=1, eos=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # an uncertain target
    target = LoadedModel(model, NoTokenizer(), {})
    return target, random_heads(target, heads=2, seed=1)


def test_sampling_is_the_target_distribution_and_typical_is_not(small):
    target, heads = small
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3], 4, 3000
    exact = exact_distribution(target.model, prompt, steps, sampler)
    tree = MedusaTree(TREES["mc_sim_7b_63"], heads.num_heads, VOCAB)
    assert {len(c) for c in tree.nodes} == {1, 2} and max(max(c) for c in tree.nodes) < VOCAB
    got = empirical(lambda: MedusaDrafter(heads, tree, sampler), target.model, prompt, steps, sampler, n)
    assert not chi_square_rejects(got, exact, n)
    typical = empirical(lambda: MedusaDrafter(heads, tree, sampler, (0.09, 0.3)), target.model, prompt, steps,
                        sampler, 300)  # fmt: skip
    assert chi_square_rejects(typical, exact, 300) and total_variation(typical, exact) > 0.3


def test_typical_is_an_option_recorded_and_runs(tiny, tmp_path, trained):
    save_heads(trained[0], tmp_path, {})
    sampler = Sampler(temperature=0.7, seed=0)
    method = medusa(tiny, tmp_path, sampler, typical=True, medusa_tree="mc16")
    assert method.options.as_dict()["typical"] is True
    assert method.options.posterior_threshold == 0.09 and method.options.posterior_alpha == 0.3
    assert "posterior_alpha" in type(method.options).unread({"typical": False})
    got = method.generate(tiny.tokenizer(PROMPTS[0])["input_ids"], StopRule(30), Timer())
    assert len(got.tokens) == 30 and got.target_forwards < 30
    exact = medusa(tiny, tmp_path, Sampler(temperature=0.7, seed=0)).generate(
        tiny.tokenizer(PROMPTS[0])["input_ids"], StopRule(30), Timer()
    )
    assert len(exact.tokens) == 30


# --- the tree and the drafter --------------------------------------------------------------------------------


def test_trees():
    default = TREES["mc_sim_7b_63"]
    assert len(default) == 63 and default[:5] == [(0,), (0, 0), (1,), (0, 1), (2,)] and default[-1] == (0, 7, 0)
    assert len(TREES["vicuna_7b_stage2"]) == 63 and TREES["vicuna_7b_stage2"][-1] == (1, 4)
    assert [len(TREES[f"mc{n}"]) for n in (8, 16, 24)] == [8, 16, 24]
    tree = MedusaTree(default, num_heads=5, vocab=320)
    assert len(tree.nodes) == 63 and tree.depth == 4
    assert MedusaTree(default, num_heads=2, vocab=320).depth == 2
    cut = tree.cut(1)
    assert len(cut.draft.tokens) == 10 and cut.draft.positions == [1] * 10
    with pytest.raises(BenchError, match="parent"):
        MedusaTree([(0,), (1, 0)], num_heads=2, vocab=320)


def test_drafter_takes_each_node_from_its_heads_top_k(tiny):
    heads = random_heads(tiny, heads=3)
    tree = MedusaTree(TREES["mc_sim_7b_63"], 3, 320)
    drafter = MedusaDrafter(heads, tree)
    assert drafter.propose([1, 2, 3], 5) is None  # no hidden state yet: an autoregressive step
    hidden = torch.randn(3, 64)
    drafter.observe_hidden(hidden[:1])
    drafter.observe_hidden(hidden[1:])  # the pending token's row and an accepted one's: the last one counts
    draft = drafter.propose([1, 2, 3, 4], 2)
    with torch.no_grad():
        top = heads(hidden[-1]).topk(10, dim=-1).indices
    nodes = [c for c in tree.nodes if len(c) <= 2]  # the budget cuts the tree at depth 2
    assert draft.tokens == [int(top[len(c) - 1, c[-1]]) for c in nodes]
    assert max(map(len, draft.paths)) == 2
    assert drafter.propose([1, 2, 3, 4, 5], 2) is None  # out of step with the hidden states: no guess


# --- files ---------------------------------------------------------------------------------------------------


def reference_state(heads: int, layers: int, hidden: int, vocab: int) -> dict[str, torch.Tensor]:
    """A state dict with FasterDecoding/Medusa's key names (ModuleList of Sequential(ResBlock..., Linear))."""
    state = {}
    for k in range(heads):
        for j in range(layers):
            state[f"{k}.{j}.linear.weight"] = torch.randn(hidden, hidden) * 0.1
            state[f"{k}.{j}.linear.bias"] = torch.randn(hidden) * 0.1
        state[f"{k}.{layers}.weight"] = torch.randn(vocab, hidden)
    return state


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_loads_the_reference_layout(tiny, tmp_path, fmt):
    state = reference_state(2, 1, 64, 320)
    if fmt == "pt":
        torch.save(state, tmp_path / "medusa_lm_head.pt")
    else:
        save_file(state, tmp_path / "medusa_lm_head.safetensors")
    config = {"medusa_num_heads": 2, "medusa_num_layers": 1, "base_model_name_or_path": "lmsys/vicuna-7b-v1.3"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    heads = load_heads(str(tmp_path), tiny)
    x = torch.randn(64)
    with torch.no_grad():
        got = heads(x)
    for k in range(2):
        h = x + torch.nn.functional.silu(state[f"{k}.0.linear.weight"] @ x + state[f"{k}.0.linear.bias"])
        torch.testing.assert_close(got[k], state[f"{k}.1.weight"] @ h)
    assert heads.source["file"] == f"medusa_lm_head.{fmt}" and heads.source["medusa_num_heads"] == 2


def test_save_writes_the_reference_layout_and_reloads(tiny, tmp_path):
    heads = random_heads(tiny, heads=2, layers=2)
    save_heads(heads, tmp_path, {"target": {"sha256": "a" * 64}, "steps": 7})
    state = torch.load(tmp_path / "medusa_lm_head.pt", weights_only=True)
    assert set(state) == set(reference_state(2, 2, 64, 320))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["medusa_num_heads"] == 2 and config["medusa_num_layers"] == 2
    assert config["base_model_name_or_path"] == "tiny" and config["decodebench"]["steps"] == 7
    again = load_heads(str(tmp_path), tiny)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), heads(x))


def test_refusals(tiny, tmp_path, monkeypatch):
    with pytest.raises(BenchError, match="--draft-heads"):
        METHODS.get("medusa").create(tiny)
    with pytest.raises(BenchError, match="no such folder"):
        load_heads(str(tmp_path / "missing"), tiny)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(BenchError, match="no medusa_lm_head.pt"):
        load_heads(str(empty), tiny)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(BenchError, match="not valid JSON"):
        load_heads(str(empty), tiny)
    narrow = tmp_path / "narrow"
    save_heads(new_heads(LoadedModel(make_model(320, layers=1), None, {}), medusa_num_heads=1), narrow, {})
    state = reference_state(1, 1, 32, 320)
    torch.save(state, narrow / "medusa_lm_head.pt")
    with pytest.raises(BenchError, match="hidden size 32 and vocab 320; the target has 64 and 320"):
        load_heads(str(narrow), tiny)
    torch.save({**state, "0.0.extra": torch.zeros(1)}, narrow / "medusa_lm_head.pt")
    with pytest.raises(BenchError, match="unexpected key '0.0.extra'"):
        load_heads(str(narrow), tiny)
    other = tmp_path / "other"
    save_heads(new_heads(tiny, medusa_num_heads=1), other, {"target": {"sha256": "a" * 64}})
    with pytest.raises(BenchError, match="sha256 aaaaaaaaaaaa"):
        load_heads(str(other), LoadedModel(tiny.model, tiny.tokenizer, {"sha256": "b" * 64}))
    load_heads(str(other), LoadedModel(tiny.model, tiny.tokenizer, {"sha256": "a" * 64}))  # the right target
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchError, match="could not download Medusa heads 'decodebench-tests/no-such-heads'"):
        load_heads("decodebench-tests/no-such-heads", tiny)
