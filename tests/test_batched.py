"""Batched decoding (`--batch-size`): `ar` and `hf` rows equal batch-1 `ar` greedy token for token (left padding,
per-row stops), the batch shares one timing, sampling draws each row from the target's distribution, and batch-1
methods refuse a batch."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from core.attention import use_ours
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS, Decoded
from methods.batched import decode_batch, left_pad
from methods.decode import Sampler, StopRule, verify_loop
from methods.hf import HFGenerate
from tests.conftest import CORPUS, make_model
from tests.test_methods import chi_square_rejects

LENGTHS = (3, 9, 17, 12)  # prompt tokens per row: every batch of 2+ rows has left padding


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread):
    yield


@pytest.fixture(scope="module", params=["sdpa", "ours"])
def model(request, tiny) -> LoadedModel:
    """The tiny fixture on transformers' sdpa, and a copy on `decodebench_sdpa` (what loaded models run: grouped
    queries folded, the padding mask repeated to match)."""
    if request.param == "sdpa":
        return tiny
    copy = make_model(len(tiny.tokenizer), eos=tiny.tokenizer.eos_token_id)
    assert use_ours(copy) == "decodebench_sdpa"
    return LoadedModel(copy, tiny.tokenizer, {"spec": "tiny-ours", "dtype": "float32"})


@pytest.fixture(scope="module")
def prompts(tiny) -> list[list[int]]:
    text = "".join(CORPUS)
    return [tiny.tokenizer(text[7 * i :])["input_ids"][:n] for i, n in enumerate(LENGTHS)]


def alone(model: LoadedModel, prompts: list[list[int]], stops: list[StopRule]) -> list[list[int]]:
    """Batch-1 `ar` greedy output of every prompt under its own stop rule."""
    ar = Autoregressive(model, None)
    return [ar.generate(p, stop, Timer()).tokens for p, stop in zip(prompts, stops, strict=True)]


def stop_rules(model: LoadedModel, prompts: list[list[int]], max_new: int) -> dict[str, list[StopRule]]:
    """Rule sets under which rows end at different steps: one shared rule whose EOS id is a token row 0 emits
    early, and per-row rules (an EOS id on row 0, a stop string on row 1, only max_new on the others)."""
    free = alone(model, prompts, [StopRule(max_new)] * len(prompts))
    tok = model.tokenizer
    early = min(3, max_new - 1)
    shared = StopRule(max_new, frozenset({free[0][early]}))
    eos, string = StopRule(max_new, frozenset({free[0][early]})), StopRule(max_new)
    if max_new > 4:
        string = StopRule(max_new, stop_strings=(tok.decode(free[1][2:4]),), tokenizer=tok)
    rest = [StopRule(max_new, frozenset({tok.eos_token_id}))] * (len(prompts) - 2)
    return {"free": [StopRule(max_new)] * len(prompts), "shared": [shared] * len(prompts), "rows": [eos, string, *rest]}


@pytest.mark.parametrize("max_new", [1, 7, 40])
def test_batched_greedy_equals_batch_one(model, prompts, max_new):
    ar, hf = Autoregressive(model, None), HFGenerate(model, None)
    for name, stops in stop_rules(model, prompts, max_new).items():
        expected = alone(model, prompts, stops)
        if max_new > 1 and name != "free":
            assert len({len(t) for t in expected}) > 1, f"{name}: every row stops at the same step"
        for size in (1, 2, 3, 4):
            for method in (ar, hf):
                got = method.generate_batch(prompts[:size], stops[:size], Timer())
                assert [d.tokens for d in got] == expected[:size], f"{method.name} batch {size}, {name} rules"
                assert all(d.accepted == [1] * len(d.tokens) for d in got)


def test_rows_with_different_budgets(model, prompts):
    stops = [StopRule(n) for n in (5, 40, 1, 12)]
    expected = alone(model, prompts, stops)
    for method in (Autoregressive(model, None), HFGenerate(model, None)):
        assert [d.tokens for d in method.generate_batch(prompts, stops, Timer())] == expected


def test_positions_count_from_each_rows_first_token(prompts):
    """On a model with absolute position embeddings (GPT-2), where positions counted from the pads would change
    every padded row's output (on RoPE models only the relative positions matter)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=2, n_positions=128, tie_word_embeddings=False)
    gpt2 = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        gpt2.lm_head.weight.mul_(8.0)
    stops = [StopRule(20)] * len(prompts)
    expected = [verify_loop(gpt2, p, stop, Timer()).tokens for p, stop in zip(prompts, stops, strict=True)]
    assert decode_batch(gpt2, prompts, stops, Timer(), 0, None) == expected


def check_timing(decoded: list[Decoded], forwards: int) -> None:
    timing = decoded[0].timing
    assert all(d.timing is timing for d in decoded)  # one Timing for the batch
    assert 1 + len(timing.steps) == forwards  # a mark after the prefill and after each later forward
    assert 0 < timing.first < timing.total
    assert timing.steps == sorted(timing.steps) and timing.steps[-1] <= timing.total


def test_batch_shares_one_timing(tiny, prompts):
    stops = [StopRule(n) for n in (6, 20, 3, 11)]
    for method in (Autoregressive(tiny, None), HFGenerate(tiny, None)):
        decoded = method.generate_batch(prompts, stops, Timer())
        assert [len(d.tokens) for d in decoded] == [6, 20, 3, 11]
        check_timing(decoded, forwards=20)  # the batch runs until its longest row ends


def test_one_host_sync_per_step(tiny, prompts, monkeypatch):
    """The loop reads the new tokens once per step (the stop checks' one sync), never per row."""
    reads = []
    tolist = torch.Tensor.tolist

    def counted(self):
        reads.append(self.shape)
        return tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    rows = decode_batch(tiny.model, prompts, [StopRule(9)] * 4, Timer(), 0, None)
    assert reads == [torch.Size([4])] * 9 and [len(r) for r in rows] == [9] * 4


def test_left_padding():
    ids, mask = left_pad([[5, 6], [7, 8, 9, 10], [11]], 0, torch.device("cpu"))
    assert ids.tolist() == [[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]]
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]


def test_sampling_runs_with_row_lengths(tiny, prompts):
    sampler = Sampler(temperature=0.8, top_k=40, top_p=0.9, seed=3)
    stops = [StopRule(n) for n in (4, 17, 1, 9)]
    for method in (Autoregressive(tiny, sampler), HFGenerate(tiny, sampler)):
        sampler.reset()
        decoded = method.generate_batch(prompts, stops, Timer())
        assert [len(d.tokens) for d in decoded] == [4, 17, 1, 9]
    sampler.reset()
    again = Autoregressive(tiny, sampler).generate_batch(prompts, stops, Timer())
    sampler.reset()
    assert [d.tokens for d in again] == [
        d.tokens for d in Autoregressive(tiny, sampler).generate_batch(prompts, stops, Timer())
    ]


VOCAB = 6


def two_token_distribution(model, prompt: list[int], sampler: Sampler) -> dict[tuple[int, int], float]:
    """The exact distribution of the first two sampled tokens after `prompt`, one forward for all pairs."""
    with torch.inference_mode():
        first = sampler.probs(model(torch.tensor([prompt])).logits[0, -1])
        seqs = torch.tensor([prompt + [x] for x in range(VOCAB)])
        second = sampler.probs(model(seqs).logits[:, -1])
    return {(x, y): float(first[x] * second[x, y]) for x, y in itertools.product(range(VOCAB), repeat=2)}


def test_sampling_matches_target_distribution():
    """Rows padded on the left (a short prompt beside a long one) draw their first two tokens from the target's
    distribution: a chi-square test per prompt over 2000 rows each, all in one batch."""
    model = make_model(VOCAB, seed=5, layers=1, eos=None)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.3)  # flatten the head: every pair of tokens is likely
    sampler = Sampler(temperature=0.5, seed=11)
    short, long = [1, 2], [3, 1, 4, 1, 5, 2, 0, 3]
    n = 2000
    rows = decode_batch(model, [short, long] * n, [StopRule(2)] * (2 * n), Timer(), 0, sampler)
    for offset, prompt in enumerate((short, long)):
        exact = two_token_distribution(model, prompt, sampler)
        counts = Counter(tuple(r) for r in rows[offset::2])
        observed = {k: v / n for k, v in counts.items()}
        assert not chi_square_rejects(observed, exact, n), f"prompt {prompt}"


@pytest.fixture(scope="module")
def draft(tiny) -> LoadedModel:
    return LoadedModel(make_model(len(tiny.tokenizer), seed=1, layers=1), tiny.tokenizer, {"spec": "tiny-draft"})


@pytest.mark.parametrize("name", ["pld", "lookahead", "speculative", "hf-pld", "hf-assisted"])
def test_batch_one_methods_refuse_a_batch(tiny, draft, prompts, name):
    cls = METHODS.get(name)
    method = cls.create(tiny, None, {}, draft=draft if cls.uses_draft else None)
    assert not method.batchable
    with pytest.raises(BenchError, match="one prompt at a time"):
        method.generate_batch(prompts[:2], [StopRule(5)] * 2, Timer())


def test_compiled_runs_refuse_a_batch(tiny, prompts):
    ar, hf = Autoregressive(tiny, None), HFGenerate(tiny, None)
    assert ar.batchable and hf.batchable
    ar.compiled = object()  # what `--compile` sets; its graphs are batch-1
    hf.compile_config = object()
    for method in (ar, hf):
        with pytest.raises(BenchError, match="--compile decodes one prompt at a time"):
            method.generate_batch(prompts[:2], [StopRule(5)] * 2, Timer())
