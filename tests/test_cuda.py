"""The CUDA paths, run on a GPU by `pytest -m cuda` (scripts/gpu_check.sh): CUDA-event timing, every lossless
method on CUDA, the bf16 exact-rate audit, `decodebench_sdpa`'s grouped-query path against stock sdpa, and
`--compile`. A check that also runs on CPU has a CPU case (unmarked), which shows here that the test itself works;
the CUDA cases skip with one reason line on a machine without CUDA."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from bench.records import exactness
from bench.runner import RunConfig, RunResult, run
from bench.store import SAMPLES, read_samples
from core.attention import NAME, sdpa_forward
from core.models import LoadedModel
from core.timing import Timer
from methods.base import METHODS, Method
from methods.decode import Draft, Sampler, StopRule, _attention
from methods.kvcache import new_cache
from tests.conftest import CORPUS, make_model

CUDA = torch.cuda.is_available()
NO_CUDA = "CUDA is not available on this machine"
ON_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason=NO_CUDA)]
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]
LOSSLESS = [name for name, cls in METHODS if cls.lossless]  # all take tiny random models (and drafts)
PROMPTS = [
    "the quick brown fox jumps over the lazy dog. the quick brown fox",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\ndef add(",
    "Write a poem about the sea and the sky",
]
MAX_NEW = 24
# Per device: prompts, new tokens and `bench run` samples (the CPU cases check the tests themselves: kept small).
SIZE = {"cpu": (PROMPTS[:1], 12, 2), "cuda": (PROMPTS, MAX_NEW, 4)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # atol and rtol, per dtype
WORK = {"cpu": 192, "cuda": 4096}  # matrix size of the timed work: a few ms to tens of ms on either device


@pytest.fixture(scope="module", params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def pair(device: str, tiny_tokenizer) -> tuple[LoadedModel, LoadedModel]:
    """A tiny grouped-query target (4 query heads on 2 key/value heads) and a different one-layer draft, fp32, on
    `device`, both on our attention path (as `core.models.load` sets it)."""
    loaded = []
    for seed, layers in ((0, 2), (1, 1)):
        model = make_model(len(tiny_tokenizer), seed=seed, layers=layers, eos=tiny_tokenizer.eos_token_id)
        model.to(device).set_attn_implementation(NAME)
        loaded.append(LoadedModel(model, tiny_tokenizer, {"spec": f"tiny-{seed}", "dtype": "float32"}))
    return loaded[0], loaded[1]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, tiny_dir) -> dict[str, dict[str, str]]:
    """The options of methods that need an input file: REST's datastore, built from the tiny corpus."""
    pytest.importorskip("pydivsufsort")
    from bench.datastore import build as build_datastore

    text = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    text.write_text("\n\n".join(CORPUS))
    store = tmp_path_factory.mktemp("datastore") / "ds"
    build_datastore(str(tiny_dir), [text], store, echo=lambda _: None)
    return {"rest": {"datastore": str(store)}}


@pytest.fixture(scope="module")
def drafters(pair: tuple[LoadedModel, LoadedModel], tmp_path_factory) -> dict[str, dict[str, str]]:
    """The options of the trained-drafter methods: random Medusa heads and an EAGLE layer for the pair's target,
    saved in the reference layouts (losslessness holds for any drafter)."""
    from methods.eagle_model import new_layer, save_layer
    from methods.medusa_model import new_heads, save_heads

    folder = tmp_path_factory.mktemp("drafters")
    save_heads(new_heads(pair[0], medusa_num_heads=3), folder / "medusa", {})
    save_layer(new_layer(pair[0]), folder / "eagle", {})
    eagle = {"draft_heads": str(folder / "eagle")}
    return {"medusa": {"draft_heads": str(folder / "medusa")}, "eagle": eagle, "eagle2": eagle}


def needed(request: pytest.FixtureRequest, name: str) -> dict[str, dict[str, str]] | None:
    """The fixture of a method that needs an input file (built, or skipped, only then)."""
    if name in ("medusa", "eagle", "eagle2"):
        return request.getfixturevalue("drafters")
    return request.getfixturevalue("inputs") if name == "rest" else None


def build(name: str, pair: tuple[LoadedModel, LoadedModel], sampler: Sampler | None = None,
          inputs: dict[str, dict[str, str]] | None = None) -> Method:  # fmt: skip
    """Method `name` at its default options on the pair's target (with the pair's draft if it takes one)."""
    target, draft = pair
    cls = METHODS.get(name)
    options = (inputs or {}).get(name, {})
    return cls.create(target, sampler, options, draft=draft if cls.uses_draft else None)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def work(device: str, steps: int) -> None:
    """Queue `steps` matrix products on `device` (asynchronous on CUDA)."""
    x = torch.randn(WORK[device], WORK[device], device=device) / WORK[device] ** 0.5
    for _ in range(steps):
        x = torch.tanh(x @ x)


# --- timing --------------------------------------------------------------------------------------------


def test_timer_marks_are_monotone_and_match_a_wall_clock(device: str) -> None:
    timer = Timer(device)
    synchronize(device)
    start = time.perf_counter()
    timer.start()
    for steps in (10, 5, 5):
        work(device, steps)
        timer.mark()
    t = timer.read()  # synchronises on CUDA: every mark has happened
    wall = time.perf_counter() - start
    marks = [t.first, *t.steps, t.total]
    assert len(t.steps) == 2 and t.first > 0
    assert marks == sorted(marks) and t.total >= t.first
    assert all(s > 0 for s in t.step_times)
    assert 0.5 * wall <= t.total <= wall + 1e-3, (t, wall)  # seconds, not ms, and the work inside the marks


def test_generation_timing_is_plausible(pair: tuple[LoadedModel, LoadedModel], device: str) -> None:
    target = pair[0]
    ids = target.tokenizer(PROMPTS[0])["input_ids"]
    method = build("ar", pair)
    method.generate(ids, StopRule(4), Timer(device))  # warm-up (CUDA context, kernels)
    synchronize(device)
    start = time.perf_counter()
    got = method.generate(ids, StopRule(MAX_NEW), Timer(device))
    synchronize(device)
    wall = time.perf_counter() - start
    t = got.timing
    assert len(got.tokens) == MAX_NEW and len(t.steps) == got.target_forwards - 1
    assert 0 < t.first <= t.total and all(s >= 0 for s in t.step_times)
    assert 0.5 * wall <= t.total <= wall + 1e-3, (t.total, wall)


# --- losslessness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_greedy_equals_ar(pair: tuple[LoadedModel, LoadedModel], device: str, name: str, request) -> None:
    target = pair[0]
    prompts, max_new, _ = SIZE[device]
    stop = StopRule(max_new, frozenset(target.eos_ids()))
    method, ar = build(name, pair, inputs=needed(request, name)), build("ar", pair)
    for prompt in prompts:
        ids = target.tokenizer(prompt)["input_ids"]
        expected = ar.generate(ids, stop, Timer(device)).tokens
        got = method.generate(ids, stop, Timer(device)).tokens
        audit = exactness(target.model, ids, expected, got)
        assert audit["exact"], f"{name} diverged from ar on {device} on {prompt!r}: {audit}"


@pytest.mark.parametrize("name", LOSSLESS)
def test_sampling_gives_valid_ids(pair: tuple[LoadedModel, LoadedModel], device: str, name: str, request) -> None:
    target = pair[0]
    sampler = Sampler(temperature=0.8, top_k=50, top_p=0.95, seed=0)
    method = build(name, pair, sampler, needed(request, name))
    prompts, max_new, _ = SIZE[device]
    stop = StopRule(max_new, frozenset(target.eos_ids()))
    for prompt in prompts:
        sampler.reset()
        got = method.generate(target.tokenizer(prompt)["input_ids"], stop, Timer(device))
        assert 0 < len(got.tokens) <= max_new and sum(got.accepted) == len(got.tokens)
        assert all(0 <= t < target.model.config.vocab_size for t in got.tokens), got.tokens
        assert len(got.tokens) == max_new or got.tokens[-1] in stop.eos_ids


# --- the exact-rate audit of `bench run` ---------------------------------------------------------------


def bench_run(tiny_dir: Path, data_dir: Path, out: Path, **kw: object) -> RunResult:
    """`bench run` on the tiny model folder and the 4 MT-bench-style questions (first turns, no warm-up)."""
    base = dict(task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), out=str(out), warmup=0, turns=1)
    return run(RunConfig(**(base | {"max_new_tokens": MAX_NEW} | kw)), progress=False)


@pytest.mark.parametrize("method", ["pld", "lookahead"])
def test_exact_rate_audit(
    device: str, method: str, tiny_dir: Path, data_dir: Path, tmp_path: Path, record_property
) -> None:
    """fp32 is exact; bf16 gets an audited rate in [0, 1] (recorded in the junit XML: near-tied tokens may flip)."""
    _, max_new, samples = SIZE[device]
    rates = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        kw = dict(method=method, dtype=dtype, device=device, limit=samples, max_new_tokens=max_new)
        row = next(s for s in bench_run(tiny_dir, data_dir, out, **kw).summaries if s["role"] == "method")
        assert row["samples"] == samples and row["exact_rate"] is not None, row
        rates[dtype] = row["exact_rate"]
        record_property(f"exact_rate_{dtype}", rates[dtype])
    assert rates["float32"] == 1.0
    assert 0.0 <= rates["bfloat16"] <= 1.0


# --- decodebench_sdpa against stock sdpa ---------------------------------------------------------------


class GroupedModule(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q", [1, 5])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_gqa_kernel_equals_stock_sdpa(device: str, dtype: torch.dtype, q: int, mask_kind: str) -> None:
    """One layer's attention, 12 query heads on 4 key/value heads, with a (batch, 1, q, kv) mask."""
    gen = torch.Generator().manual_seed(q)
    query = torch.randn(2, 12, q, 64, generator=gen).to(device, dtype)
    key, value = (torch.randn(2, 4, 300, 64, generator=gen).to(device, dtype) for _ in range(2))
    allowed = torch.rand(2, 1, q, 300, generator=gen) > 0.3
    allowed[..., 0] = True
    additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    mask = (allowed if mask_kind == "bool" else additive).to(device)
    ours, _ = sdpa_forward(GroupedModule(), query, key, value, mask, scaling=0.125)
    stock, _ = sdpa_attention_forward(GroupedModule(), query, key, value, mask, scaling=0.125)
    assert ours.shape == stock.shape == (2, q, 12, 64)
    torch.testing.assert_close(ours, stock, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def qwen2(device: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    """A tiny random Qwen2 model with grouped-query attention: 6 query heads on 2 key/value heads."""
    torch.manual_seed(0)
    shape = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6)
    config = Qwen2Config(vocab_size=300, num_key_value_heads=2, max_position_embeddings=512, **shape)
    return Qwen2ForCausalLM(config).to(device, dtype).eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gqa_model_steps_equal_stock_sdpa(device: str, dtype: torch.dtype) -> None:
    """The steps the engine runs after a 40-token prefill, on one cache (the step's positions cropped after each):
    q = 1, a 5-token chain with transformers' mask, and with the engine's own 4D mask (Lookahead's path)."""
    model = qwen2(device, dtype)
    gen = torch.Generator().manual_seed(0)
    cache = new_cache(model)
    logits: dict[str, list[torch.Tensor]] = {"sdpa": [], NAME: []}
    with torch.inference_mode():
        model(torch.randint(300, (1, 40), generator=gen).to(device), past_key_values=cache)
        chain = torch.randint(300, (1, 5), generator=gen).to(device)
        positions, mask = _attention(Draft.chain(chain[0, 1:].tolist()), 40, chain.device, model, cache)
        steps = [(chain[:, :1], {}), (chain, {}), (chain, {"position_ids": positions, "attention_mask": mask})]
        for step, kwargs in steps:
            for impl, outputs in logits.items():
                model.set_attn_implementation(impl)
                outputs.append(model(step, past_key_values=cache, **kwargs).logits.float())
                cache.crop(-step.shape[1])
    for ours, stock in zip(logits[NAME], logits["sdpa"], strict=True):
        torch.testing.assert_close(ours, stock, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


# --- --compile -----------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_compile_equals_eager(tiny_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """`bench run --method ar --compile` on CUDA gives the eager run's tokens, and something was compiled."""
    if "compile" not in {f.name for f in dataclasses.fields(RunConfig)}:
        pytest.skip("no --compile in this version")
    from torch._dynamo.utils import counters

    counters.clear()
    tokens = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        bench_run(tiny_dir, data_dir, out, method="ar", device="cuda", compile=compiled)
        tokens[compiled] = [r["token_ids"] for r in read_samples(out / SAMPLES)[0]]
        if not compiled:
            assert not counters["stats"]["unique_graphs"], "the eager run compiled a graph"
    assert counters["stats"]["unique_graphs"] > 0, "--compile compiled nothing"
    assert len(tokens[True]) == 4 and tokens[True] == tokens[False]
