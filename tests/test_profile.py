"""The cost model: kernel backends, `bench profile` on a tiny random model, the stored curve's interpolation, and
the speedup it predicts for records (the report's predicted column and its gap warning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import profile as prof
from bench import report as rep
from core import kernels
from core.costmodel import CostCurve, ProfileKey, decode_cost, measured_decode_speedup, predicted_speedup, stored
from core.errors import BenchError
from tests.conftest import make_model
from tests.test_cli import bench


def test_onednn_kernels_match_stock_linear_and_switch_back():
    model = make_model(vocab=97, layers=2).eval()
    ids = torch.tensor([[5, 17, 3, 42, 8]])
    with torch.inference_mode():
        stock = model(ids).logits
        assert kernels.apply(model, "onednn") == sum(1 for m in model.modules() if isinstance(m, kernels.OneDNNLinear))
        assert any(isinstance(m, kernels.OneDNNLinear) for m in model.modules())
        packed = model(ids).logits
        assert kernels.apply(model, "aten") > 0
    assert not any(isinstance(m, kernels.OneDNNLinear) for m in model.modules())
    torch.testing.assert_close(packed, stock, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "device", "message"),
                         [("mkl", "cpu", "unknown kernels"), ("onednn", "cuda", "CPU only")])  # fmt: skip
def test_kernels_refuse_unknown_names_and_devices(name, device, message):
    with pytest.raises(BenchError, match=message):
        kernels.check(name, device)


def test_measure_gives_every_cell_relative_to_one_query_token():
    model = make_model(vocab=97, layers=2).eval()
    rows = prof.relative(prof.measure(model, [8, 16], [1, 3], repeats=2))
    assert [(r["context"], r["q"]) for r in rows] == [(8, 1), (8, 3), (16, 1), (16, 3)]
    assert all(r["ms"] > 0 and r["ms_min"] <= r["ms"] for r in rows)
    assert [r["ratio"] for r in rows if r["q"] == 1] == [1.0, 1.0]


def _rows(table: dict[int, dict[int, float]], backend: str = "aten") -> list[dict]:
    return [{"context": c, "q": q, "ms": ms, "backend": backend} for c, row in table.items() for q, ms in row.items()]


def test_cost_curve_interpolates_in_q_and_context_and_clamps():
    curve = CostCurve(_rows({100: {1: 10.0, 5: 20.0}, 300: {1: 30.0, 5: 60.0}}))
    assert curve.ms(3, 100) == pytest.approx(15.0)
    assert curve.ms(1, 200) == pytest.approx(20.0)
    assert curve.ms(9, 1000) == pytest.approx(60.0)  # clamped at the largest q and context
    assert curve.ratio(5, 300) == pytest.approx(2.0)
    with pytest.raises(BenchError, match="every"):
        CostCurve(_rows({100: {1: 10.0, 5: 20.0}, 300: {1: 30.0}}))


def _record(method: str, accepted: list[int], steps: list[int] | None, seconds: float, drafts: int = 0) -> dict:
    return {"method": method, "prompt_id": "p", "prompt_tokens": 100, "accepted": accepted, "step_tokens": steps,
            "new_tokens": sum(accepted), "draft_forwards": drafts, "ttft_s": 0.1, "total_s": seconds}  # fmt: skip


def test_predicted_speedup_is_tokens_per_forward_over_the_verify_cost():
    curve = CostCurve(_rows({100: {1: 10.0, 4: 20.0}}))  # a forward of 4 costs two AR steps
    method = _record("pld", [1, 4, 4, 1], [100, 4, 4, 4], 0.1 + 0.06)
    baseline = _record("ar", [1] * 10, [100] + [1] * 9, 0.1 + 0.09)
    # method: 9 tokens in 3 forwards of 20 ms; baseline: 9 tokens in 9 forwards of 10 ms -> (9/60) / (9/90)
    assert decode_cost(method, curve) == pytest.approx(60.0)
    assert predicted_speedup([(method, baseline)], curve) == pytest.approx(1.5)
    assert measured_decode_speedup([(method, baseline)]) == pytest.approx(1.5)
    drafted = _record("speculative", [1, 4, 4, 1], [100, 4, 4, 4], 0.2, drafts=6)
    assert predicted_speedup([(drafted, baseline)], curve) is None  # draft forwards and no draft curve
    draft = CostCurve(_rows({100: {1: 5.0, 4: 5.0}}))
    assert predicted_speedup([(drafted, baseline)], curve, draft) == pytest.approx((9 / 90) / (9 / 90))
    assert predicted_speedup([(_record("x", [1, 4], None, 0.2), baseline)], curve) is None


def test_report_predicts_from_the_stored_profile_and_warns_on_a_gap(tmp_path, monkeypatch):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))
    key = ProfileKey("tiny-model", "float32", "cpu", False, 2)
    prof.save(_rows({100: {1: 10.0, 4: 20.0}}), key, {}, key.folder())
    assert stored(key).ms(4, 100) == 20.0 and stored(key, "onednn") is None
    run = rep.Run(tmp_path, {"model": "somewhere/tiny-model", "dtype": "float32", "device": "cpu"},
                  {"device": "cpu", "torch_threads": 2}, [], [], [])  # fmt: skip
    curves = rep.cost_curves(run)
    assert curves[0] is not None and curves[1] is None
    slow = _record("pld", [1, 4, 4, 1], [100, 4, 4, 4], 0.1 + 0.18)  # measured 0.5x where 1.5x is predicted
    baseline = _record("ar", [1] * 10, [100] + [1] * 9, 0.1 + 0.09)
    row = rep.prediction(curves, [slow], [baseline])
    assert row["speedup_predicted"] == pytest.approx(1.5) and row["speedup_decode"] == pytest.approx(0.5)
    assert "lost outside the target's forwards" in " ".join(rep.warnings(row | {"method": "pld", "tau": 3.0}))


def test_bench_profile_writes_and_stores_the_curve(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    args = ["--shape", "tiny", "--contexts", "8", "--queries", "1,2", "--repeats", "1", "--threads", "1"]
    try:
        code, text, _ = bench(monkeypatch, capsys, "profile", *args, "--out", str(out))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, text
    assert "c(q)/c(1)" in text and "onednn" in text
    for name in ("profile.csv", "profile.json", "profile.png"):
        assert (out / name).is_file()
    meta = json.loads((out / "profile.json").read_text())
    assert meta["key"]["model"] == "shape-tiny" and meta["key"]["threads"] == 1
    key = ProfileKey(**meta["key"])
    assert Path(key.folder(), "profile.csv").is_file() and stored(key, "aten") is not None


@pytest.mark.parametrize(("args", "message"), [(["--queries", "1,a"], "comma-separated integers"),
                                               (["--shape", "huge"], "unknown shape"),
                                               (["--kernels", "mkl"], "unknown kernels")])  # fmt: skip
def test_bench_profile_refuses_bad_input_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path))
    code, _, err = bench(monkeypatch, capsys, "profile", *(["--shape", "tiny"] if "--shape" not in args else []), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_run_with_onednn_kernels_is_exact_and_recorded(tiny_dir, data_dir, tmp_path):
    from bench.runner import RunConfig, run
    from core.files import read_json

    out = tmp_path / "run"
    config = RunConfig(method="pld", task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), out=str(out),
                       max_new_tokens=12, warmup=0, turns=1, limit=2, kernels="onednn")  # fmt: skip
    method = run(config, progress=False).summaries[1]
    assert method["exact_rate"] == 1.0  # both lanes on oneDNN: the baseline's own kernels
    manifest = read_json(out / "manifest.json")
    assert manifest["config"]["kernels"] == "onednn"
    assert manifest["config"]["model_artifact"]["kernels"] == "onednn"
    assert "kernels=onednn" in rep.settings_label(manifest["config"])
    with pytest.raises(BenchError, match="drop --kernels"):
        RunConfig(method="ar", task="mtbench", compile=True, kernels="onednn").validate()
