"""`--compile`: compiled forwards on the static KV cache decode exactly what the eager engine decodes (ar, pld,
speculative on inductor; Lookahead and Jacobi on dynamo's eager backend), roll back, refuse a compile in the timed
part, and refuse what they cannot run."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from bench.runner import RunConfig, run
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.compiled import CompiledModel, compiled_forward
from methods.decode import Draft, StopRule
from methods.hf import HFGenerate
from methods.static_cache import SlotCache, step_layout
from tests.conftest import make_model

PROMPTS = ["Write a poem about the sea", "def add(a, b):", "the quick brown fox jumps over the lazy dog. the quick"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Generated kernels parallelise even tiny loops: on a busy 2-core machine every OpenMP barrier waits for a
    descheduled thread (100 ms steps); one thread keeps these tests fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def compiled(tiny, one_thread) -> CompiledModel:
    """The tiny model compiled by inductor for steps of 1 and up to 4 tokens, sealed: a later compile fails a test."""
    model = CompiledModel(tiny.model, buckets=(1, 4))
    model.warm_up(4)
    model.seal()
    return model


@pytest.fixture(scope="module")
def traced(tiny, one_thread) -> CompiledModel:
    """The tiny model's graphs traced by dynamo but run eagerly (fast): up to 32-token steps, sealed."""
    model = CompiledModel(tiny.model, buckets=(1, 16, 32), backend="eager")
    model.warm_up(32)
    model.seal()
    return model


def decode(tiny, name: str, options: dict, compiled: CompiledModel | None, prompt: str, draft=None):
    method = METHODS.get(name).create(tiny, None, options, draft)
    if compiled is not None:
        method.use_compiled(compiled)
    return method.generate(tiny.tokenizer(prompt)["input_ids"], StopRule(40), Timer())


@pytest.mark.parametrize("prompt", PROMPTS)
def test_compiled_ar_equals_eager_ar(tiny, compiled, prompt):
    ids = tiny.tokenizer(prompt)["input_ids"]
    eager = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer())
    result = decode(tiny, "ar", {}, compiled, prompt)
    assert result.tokens == eager.tokens and result.accepted == [1] * 40
    assert result.step_tokens == [len(ids)] + [1] * 39 and compiled.graphs == 2


@pytest.mark.parametrize("name, options, draft_seed", [
    ("pld", {"num_candidates": 3}, None),  # 1-3 draft tokens: padded to the 4-token bucket
    ("speculative", {"num_draft": 3}, 0),  # the target as its own draft: every draft token accepted
    ("speculative", {"num_draft": 3}, 1),  # another model: most drafts rejected (rollback by overwriting)
])  # fmt: skip
def test_compiled_drafting_equals_eager(tiny, compiled, name, options, draft_seed):
    draft = None
    if draft_seed is not None:
        model = tiny.model if draft_seed == 0 else make_model(len(tiny.tokenizer), seed=draft_seed)
        draft = LoadedModel(model, tiny.tokenizer, {"spec": f"draft{draft_seed}"})
    accepted = []
    for prompt in PROMPTS:
        eager = decode(tiny, name, options, None, prompt, draft)
        result = decode(tiny, name, options, compiled, prompt, draft)
        assert result.tokens == eager.tokens == decode(tiny, "ar", {}, None, prompt).tokens
        assert result.accepted == eager.accepted and result.step_tokens == eager.step_tokens
        assert sum(result.drafted) > 0  # drafts were verified on the compiled path
        accepted += result.accepted[1:]
    assert max(accepted) > 1 if draft_seed != 1 else min(accepted) == 1  # accepted (or rejected) drafts


@pytest.mark.parametrize("name, options", [
    ("lookahead", {"window": 3, "ngram": 3, "guess": 3}),  # custom positions and masks, accepted guesses moved
    ("lookahead", {"window": 2, "ngram": 4, "guess": 4, "share_prefixes": True}),  # a guess trie
    ("jacobi", {"window": 5}),
])  # fmt: skip
def test_custom_masks_and_index_rollback_equal_eager(tiny, traced, name, options, monkeypatch):
    """The masks, positions and index-copy rollback of Lookahead's drafts, on graphs traced by dynamo."""
    keep, moved = SlotCache.keep, []

    def spy(cache: SlotCache, pending: int, n_step: int, accepted: list[int]) -> None:
        moved.append(accepted != list(range(len(accepted))))
        keep(cache, pending, n_step, accepted)

    monkeypatch.setattr(SlotCache, "keep", spy)
    taus = []
    for prompt in PROMPTS:
        eager = decode(tiny, name, options, None, prompt)
        result = decode(tiny, name, options, traced, prompt)
        assert result.tokens == eager.tokens == decode(tiny, "ar", {}, None, prompt).tokens
        assert result.accepted == eager.accepted
        taus.append(len(result.tokens) / len(result.accepted))
    assert max(taus) > 1 and any(moved) == (name == "lookahead")  # accepted guesses sit after the window


@torch.inference_mode()
def test_keep_moves_accepted_draft_slots_behind_the_pending_token(tiny):
    cache = SlotCache(tiny.model)
    for layer in cache.layers:
        for buffer in (layer.keys, layer.values):
            buffer.copy_(torch.arange(cache.capacity, dtype=buffer.dtype)[None, None, :, None].expand_as(buffer))
    cache.keep(5, 6, [0, 1])  # an accepted prefix: nothing moves
    assert cache.layers[0].keys[0, 0, :12, 0].tolist() == list(range(12))
    cache.keep(5, 6, [2, 4, 5])  # draft tokens 2, 4, 5 sit at slots 8, 10, 11
    for layer in cache.layers:
        for buffer in (layer.keys, layer.values):
            assert buffer[0, 1, 5:9, 3].tolist() == [5, 8, 10, 11]


def test_step_layout_hides_filler_rows_and_follows_draft_positions():
    visible = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    positions, write, mask = step_layout(3, 1, 2, 4, visible, offsets=[2, 5])
    assert positions.tolist() == [[3, 5, 8, 6]] and write.tolist() == [3, 4, 5, 6]
    seen = (mask[0, 0] == 0).int().tolist()
    assert seen == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]


def test_a_compile_in_the_timed_part_raises(tiny):
    graphs = CompiledModel(tiny.model, buckets=(1, 2), backend="eager")
    graphs.warm_up(1)
    graphs.step(3, 20)  # another window, same graph
    assert graphs.graphs == 1 and graphs.compile_s > 0
    graphs.seal()
    with pytest.raises(BenchError, match="compiled a new graph in the timed part"):
        graphs.step(3, 20, Draft.chain([4]))  # a 2-token step: its bucket was never compiled


def test_refusals(tiny):
    with pytest.raises(BenchError, match="exceeds --compile's largest bucket"):
        CompiledModel(tiny.model, buckets=(1, 4), backend="eager").bucket(5)
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=8)  # fmt: skip
    with pytest.raises(BenchError, match="full-attention models only"):
        CompiledModel(MistralForCausalLM(config))
    for name in ("hf-pld", "hf-assisted", "llm2slm"):
        with pytest.raises(BenchError, match="does not support --compile"):
            RunConfig(method=name, task="mtbench", compile=True).resolve()
    with pytest.raises(BenchError, match="--compile does not support --device-map"):
        RunConfig(method="ar", task="mtbench", compile=True, device_map="auto").resolve()


def test_a_forward_dynamo_cannot_capture_is_refused_at_warm_up(tiny_tokenizer):
    model = make_model(len(tiny_tokenizer))
    norm = model.model.norm.forward

    def split(x: torch.Tensor) -> torch.Tensor:  # what a host sync or unsupported call does: no single graph
        torch._dynamo.graph_break()
        return norm(x)

    model.model.norm.forward = split
    with pytest.raises(BenchError, match="cannot compile this model's forward"):
        CompiledModel(model, buckets=(1,), backend="eager").warm_up(1)


def test_compiled_forward_times_one_step(tiny):
    forward = compiled_forward(tiny.model, 64, buckets=(4,))
    ids = torch.tensor([[5, 6, 7]])
    logits = forward(ids, 10, rows=1)
    assert logits.shape == (1, tiny.model.config.vocab_size) and forward.compiled.graphs == 1
    forward(ids[:, :2], 300)  # a longer context: a larger SlotCache, the same graph
    assert forward.compiled.graphs == 1 and forward.compiled.cache.capacity == 512


def test_hf_static_compile_equals_ar(tiny):
    hf = HFGenerate(tiny, None)
    hf.use_compiled(CompiledModel(tiny.model, backend="eager"))  # hf runs transformers' own compile path
    ids = tiny.tokenizer(PROMPTS[0])["input_ids"]
    assert hf.warm_up_compiled(ids) > 0
    result = hf.generate(ids, StopRule(20), Timer())
    assert result.tokens == Autoregressive(tiny, None).generate(ids, StopRule(20), Timer()).tokens
    assert result.target_forwards == 20


def test_run_records_compile_and_keeps_old_identities(tiny_dir, data_dir, tmp_path):
    base = dict(method="ar", task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), max_new_tokens=8, turns=1)
    assert "compile" not in RunConfig(**base).resolve().identity()  # runs from before --compile keep their hash
    result = run(RunConfig(**base, limit=2, compile=True, out=str(tmp_path / "r")), progress=False)
    (row,) = result.summaries
    assert row["compile_s"] > 0 and row["samples"] == 2
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["config"]["compile"] is True
