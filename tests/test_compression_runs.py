"""`bench run` with the compression axis on a tiny model folder: a quantized method lane against the full-precision
baseline, quantized and self drafts, batched lanes, perplexity and memory columns, and the sweep keys."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.report import settings_label
from bench.runner import RunConfig, run
from bench.store import MANIFEST, SAMPLES
from bench.sweep import cells
from core.errors import BenchError


def config(tiny_dir, data_dir, out, **kw) -> RunConfig:
    base = dict(method="ar", task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), out=str(out))
    return RunConfig(**(base | {"max_new_tokens": 10, "warmup": 0, "turns": 1, "threads": 1} | kw))


def lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / SAMPLES).read_text().splitlines()]


def test_quantized_ar_is_measured_against_full_precision_ar(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "q"
    base, method = run(config(tiny_dir, data_dir, out, quant="int8-wo", limit=3), progress=False).summaries
    assert (base["role"], base["quant"], method["role"], method["quant"]) == ("baseline", "none", "method", "int8-wo")
    assert method["paired_samples"] == 3 and method["speedup"] > 0
    assert method["model_bytes"] < base["model_bytes"]  # the int8 copy stores less than the fp32 original
    assert base["peak_rss_mb"] == method["peak_rss_mb"] > 0  # one process-wide peak, taken once
    records = [r for r in lines(out) if r["role"] == "method"]
    assert all(r["exact"] is not None for r in records)  # audited against full-precision AR, token for token
    for r in records:
        if not r["exact"]:
            assert r["first_divergence"] is not None
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["quant"] == "int8-wo"
    assert (
        manifest["config"]["quantization"]["target"]["scheme"] == "int8-wo"
        and "torchao" in manifest["config"]["quantization"]["target"]["library"]
    )


def test_full_precision_run_identity_is_unchanged(tiny_dir, data_dir, tmp_path):
    """Runs stored before the compression axis resume: its settings at their defaults are not in the identity."""
    identity = config(tiny_dir, data_dir, tmp_path / "r").identity()
    assert not {"quant", "draft_quant", "batch_size", "perplexity"} & set(identity)
    assert config(tiny_dir, data_dir, tmp_path / "r", quant="int4-wo").identity()["quant"] == "int4-wo"


def test_self_draft_quantized_is_lossless(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "s"
    cfg = config(tiny_dir, data_dir, out, method="speculative", draft="self", draft_quant="int8-wo", limit=2)
    _, method = run(cfg, progress=False).summaries
    assert method["exact_rate"] == 1.0 and method["quant"] == "none"
    assert method["tau"] > 1.5  # the draft is the target itself, quantized: most tokens are accepted
    manifest = json.loads((out / MANIFEST).read_text())
    assert (
        manifest["config"]["quantization"]["draft"]["scheme"] == "int8-wo"
        and "target" not in manifest["config"]["quantization"]
    )
    assert settings_label(manifest["config"]).endswith("draft=self draft_quant=int8-wo")


def test_batched_lanes_match_batch_one_and_share_the_batch_time(tiny_dir, data_dir, tmp_path):
    single = run(config(tiny_dir, data_dir, tmp_path / "b1", limit=3), progress=False)
    batched = run(config(tiny_dir, data_dir, tmp_path / "b3", quant="int8-wo", limit=3, batch_size=3), progress=False)
    one = {r["prompt_id"]: r for r in lines(tmp_path / "b1")}
    records = lines(tmp_path / "b3")
    assert {r["batch"] for r in records} == {3}
    for r in (r for r in records if r["role"] == "baseline"):
        assert r["token_ids"] == one[r["prompt_id"]]["token_ids"]  # left-padded batch = batch 1, fp32 greedy
        assert r["total_s"] == pytest.approx(r["batch_total_s"] / 3)
        assert r["ttft_s"] <= r["latency_s"] <= r["batch_total_s"] + 1e-9
    base, method = batched.summaries
    assert base["samples"] == method["samples"] == 3 and method["e2e_ms_median"] > 0
    assert single.summaries[0]["samples"] == 3


def test_perplexity_per_lane(tiny_dir, data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "wmt_de_en").mkdir()
    rows = [{"id": i, "src": f"Satz {i}.", "ref": f"The quick brown fox {i} jumps."} for i in range(6)]
    (data / "wmt_de_en" / "newstest2014.de-en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = config(tiny_dir, data, tmp_path / "p", quant="int4-wo", limit=1, perplexity=5)
    base, method = run(cfg, progress=False).summaries
    assert base["perplexity"] > 1 and method["perplexity"] > 1 and base["perplexity"] != method["perplexity"]
    assert base["perplexity_text"].startswith("newstest2014[:5]")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"quant": "int3"}, "unknown --quant"),
        ({"draft_quant": "int8-wo"}, "--draft-quant needs a draft model"),
        ({"method": "pld", "batch_size": 2}, "decodes one prompt at a time"),
        ({"batch_size": 2, "turns": 2}, "first turns only"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"quant": "int8-wo", "kernels": "onednn"}, "drop --kernels"),
    ],
)
def test_bad_compression_settings_are_refused(tiny_dir, data_dir, tmp_path, kw, message):
    with pytest.raises(BenchError, match=message):
        run(config(tiny_dir, data_dir, tmp_path / "bad", limit=1, **kw), progress=False)


def test_sweep_keys_for_quant_and_batch(tiny_dir, tmp_path):
    sweep = {
        "models": [str(tiny_dir)],
        "tasks": [{"name": "mtbench", "batch_size": 4}, {"name": "mtbench"}],
        "methods": [
            {"method": "ar", "quant": "int8-wo"},
            {"method": "pld", "tasks": ["mtbench"]},
            {"method": "ar"},
        ],  # fmt: skip
        "turns": 1,
    }
    found = cells(sweep, tmp_path)
    by_dir = sorted((c.config.out.split("/")[-3], c.config.method, c.config.quant, c.config.batch_size) for c in found)
    assert by_dir == [
        ("mtbench", "ar", "int8-wo", 1),
        ("mtbench", "pld", "none", 1),
        ("mtbench-b4", "ar", "int8-wo", 4),
    ]
    assert {c.baseline_dir.parent.parent.name for c in found} == {"mtbench", "mtbench-b4"}  # one baseline per batch
