"""`bench run` end to end on a tiny model folder: records, baseline pairing, exactness, resume after a kill."""

from __future__ import annotations

import json

import pytest

from bench.runner import RunConfig, run
from bench.store import SAMPLES
from methods.ar import Autoregressive


def config(tiny_dir, data_dir, out, **kw) -> RunConfig:
    base = dict(method="hf", task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), out=str(out))
    return RunConfig(**(base | {"max_new_tokens": 12, "warmup": 0, "turns": 1} | kw))


def lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / SAMPLES).read_text().splitlines()]


def test_run_pairs_method_with_baseline(tiny_dir, data_dir, tmp_path):
    result = run(config(tiny_dir, data_dir, tmp_path / "r", limit=3), progress=False)
    records = lines(tmp_path / "r")
    assert sorted((r["role"], r["prompt_id"]) for r in records) == sorted(
        (role, pid) for role in ("baseline", "method") for pid in ("81", "82", "83")
    )
    for r in records:
        assert r["new_tokens"] == len(r["token_ids"]) == sum(r["accepted"]) <= 12
        assert r["tau"] == 1.0 and r["target_forwards"] == r["new_tokens"]
        assert r["total_s"] >= r["ttft_s"] > 0
        if r["role"] == "method":
            assert r["exact"] is True  # transformers' greedy equals our loop in fp32
    base, method = result.summaries
    assert base["speedup"] is None and method["samples"] == 3 and method["exact_rate"] == 1.0
    assert 0 < base["roofline_fraction"] < 1


def test_repeats_interleave_with_the_baseline_and_extend_on_resume(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "r"
    run(config(tiny_dir, data_dir, out, method="pld", limit=2, repeats=2), progress=False)
    first = lines(out)
    order = [(r["role"], r["prompt_id"], r["repeat"]) for r in first]
    assert order == [
        ("baseline", "81", 1),
        ("method", "81", 1),
        ("baseline", "81:r2", 2),
        ("method", "81:r2", 2),
        ("baseline", "82", 1),
        ("method", "82", 1),
        ("baseline", "82:r2", 2),
        ("method", "82:r2", 2),
    ]
    result = run(config(tiny_dir, data_dir, out, method="pld", limit=2, repeats=3), progress=False)
    records = lines(out)
    assert len(records) == 12 and records[:8] == first  # only the third repeat was added
    method = result.summaries[1]
    assert method["repeats"] == 3 and method["paired_prompts"] == 2 and method["paired_samples"] == 6
    assert method["speedup_repeat_std"] >= 0 and method["exact_rate"] == 1.0


def test_interrupted_run_resumes_without_loss_or_duplicates(tiny_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = Autoregressive.generate
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Autoregressive, "generate", dying)
    with pytest.raises(KeyboardInterrupt):
        run(config(tiny_dir, data_dir, out, method="ar", limit=4), progress=False)
    first = lines(out)
    assert [r["prompt_id"] for r in first] == ["81", "82"]
    monkeypatch.setattr(Autoregressive, "generate", real)
    run(config(tiny_dir, data_dir, out, method="ar", limit=4), progress=False)
    final = lines(out)
    assert [r["prompt_id"] for r in final] == ["81", "82", "83", "84"]
    assert final[:2] == first  # finished samples kept as they were


def test_limit_grows_on_resume_but_config_change_is_refused(tiny_dir, data_dir, tmp_path):
    from core.errors import BenchError

    out = tmp_path / "r"
    run(config(tiny_dir, data_dir, out, method="ar", limit=1), progress=False)
    run(config(tiny_dir, data_dir, out, method="ar", limit=2), progress=False)
    assert len(lines(out)) == 2
    with pytest.raises(BenchError, match="different config"):
        run(config(tiny_dir, data_dir, out, method="ar", limit=2, max_new_tokens=5), progress=False)
    assert len(lines(out)) == 2


def test_sampling_run_is_seeded(tiny_dir, data_dir, tmp_path):
    a = run(config(tiny_dir, data_dir, tmp_path / "a", method="ar", limit=2, temperature=0.8), progress=False)
    b = run(config(tiny_dir, data_dir, tmp_path / "b", method="ar", limit=2, temperature=0.8), progress=False)
    assert [r["token_ids"] for r in lines(a.out)] == [r["token_ids"] for r in lines(b.out)]


def test_mtbench_second_turn_is_conditioned_on_own_first_answer(tiny_dir, data_dir, tmp_path, monkeypatch):
    from tasks.mtbench import MTBench

    seen = []
    real = MTBench.prompt_ids

    def spy(self, sample, tokenizer, history=()):
        seen.append(list(history))
        return real(self, sample, tokenizer, history)

    monkeypatch.setattr(MTBench, "prompt_ids", spy)
    result = run(config(tiny_dir, data_dir, tmp_path / "r", method="pld", limit=2, turns=None), progress=False)
    records = lines(tmp_path / "r")
    assert sorted(r["prompt_id"] for r in records if r["role"] == "method") == ["81", "81:t2", "82", "82:t2"]
    by_key = {(r["role"], r["prompt_id"]): r for r in records}
    turn_two_histories = [h for h in seen if h]
    assert turn_two_histories, "the second turn was never built"
    first_answers = {by_key[(role, "81")]["text"] for role in ("baseline", "method")}
    assert any(h[0][1] in first_answers for h in turn_two_histories)
    assert all(r["turn"] in (1, 2) for r in records)
    assert result.summaries[1]["exact_rate"] == 1.0
    # --turns 1 keeps first turns only
    run(config(tiny_dir, data_dir, tmp_path / "one", method="ar", limit=2, turns=1), progress=False)
    assert [r["prompt_id"] for r in lines(tmp_path / "one")] == ["81", "82"]


def test_device_map_placement_is_recorded(tiny_dir, data_dir, tmp_path):
    run(config(tiny_dir, data_dir, tmp_path / "r", method="ar", limit=1, device_map="auto"), progress=False)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["config"]["device_map"] == "auto"
    assert set(manifest["config"]["placement"].values()) == {"cpu"}  # accelerate's placement on a CPU-only node
