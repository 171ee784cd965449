"""Reports, sweeps and regression checks on tiny models: rows, flags, paper joins, shared baselines, skipping,
failed cells, and a check that fails when a regression is injected."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench import report as rep
from bench.against import load_reference
from bench.runner import RunConfig, run
from bench.store import SAMPLES
from methods import verify
from tests.test_cli import bench


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory, tiny_dir, data_dir):
    root = tmp_path_factory.mktemp("sweep")
    config = {
        "name": "tiny",
        "models": [str(tiny_dir)],
        "data_dir": str(data_dir),
        "limit": 3,
        "turns": 1,
        "warmup": 0,
        "max_new_tokens": 12,
        "tasks": ["mtbench"],
        "methods": ["pld", {"method": "lookahead", "grid": {"window": [2, 3], "ngram": [3], "guess": [2]}}],
    }
    path = root / "tiny.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def swept(sweep_file):
    """The tiny sweep and its report, made once for the module: 3 cells sharing one AR baseline."""
    from bench.report import write_report
    from bench.sweep import run_sweep

    out = sweep_file.parent / "out"
    status = run_sweep(sweep_file, out, echo=lambda _: None)
    assert all(c["status"] == "done" for c in status["cells"].values()), status
    write_report([out], out / "report", [], plots=True, echo=lambda _: None)
    return out


def test_sweep_shares_one_baseline_and_reports_every_cell(swept):
    out = swept
    folder = out / "mtbench" / next(p.name for p in (out / "mtbench").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["ar", "lookahead-W2_N3_G2", "lookahead-W3_N3_G2", "pld"]
    baseline = [json.loads(x) for x in (folder / "ar" / SAMPLES).read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in baseline) == ["81", "82", "83"]  # measured once, not once per cell
    for cell in ("pld", "lookahead-W2_N3_G2"):
        manifest = json.loads((folder / cell / "manifest.json").read_text())
        assert manifest["config"]["baseline_run"] == "../ar"
        records = [json.loads(x) for x in (folder / cell / SAMPLES).read_text().splitlines()]
        assert {r["role"] for r in records} == {"method"} and all(r["exact"] for r in records)
    df = pd.read_csv(out / "report" / "summary.csv")
    assert set(df["category"]) == {"all", "coding", "writing"}  # MT-bench categories get their own rows
    df = df[df["category"] == "all"]
    assert sorted(df["method"]) == ["ar", "lookahead", "lookahead", "pld"]
    method_rows = df[df["method"] != "ar"]
    assert (method_rows["paired_samples"] == 3).all() and (method_rows["exact_rate"] == 1.0).all()
    assert (method_rows["speedup_ci_low"] <= method_rows["speedup"]).all()
    assert (method_rows["speedup"] <= method_rows["speedup_ci_high"]).all()
    assert df[df["method"] == "ar"]["speedup"].isna().all()  # the baseline is not paired with itself
    assert (method_rows["acceptance_rate"].between(0, 1)).all()
    assert {p.name for p in (out / "report").glob("*.png")} >= {"speedup_by_task.png", "tokens_per_step.png"}


def test_finished_cells_are_skipped(swept, sweep_file, monkeypatch, capsys):
    out = swept
    calls = []
    monkeypatch.setattr("bench.runner.run", lambda *a, **k: calls.append(a))
    code, stdout, _ = bench(monkeypatch, capsys, "sweep", str(sweep_file), "--out", str(out), "--no-report")
    assert code == 0 and calls == [] and stdout.count("finished earlier, skipped") == 3


def test_failed_cell_is_recorded_and_the_sweep_goes_on(tmp_path, sweep_file, monkeypatch, capsys):
    config = json.loads(sweep_file.read_text())
    config["models"].append(str(tmp_path / "missing-model"))  # fails when its cell loads it
    config["methods"] = ["ar", "jacobi"]
    config["limit"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    code, out, _ = bench(monkeypatch, capsys, "sweep", str(path), "--out", str(tmp_path / "o"), "--no-report")
    assert code == 1
    assert "1 cells done, 1 failed" in out and "missing-model' is neither a preset" in out
    status = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [c["status"] for c in status["cells"].values()] == ["done", "failed"]
    trace = list(status["cells"].values())[1]["trace"]
    assert "bench/runner.py" in trace and str(Path.cwd()) not in trace  # where, without the machine's paths
    code, out, _ = bench(monkeypatch, capsys, "report", str(tmp_path / "o"), "--out", str(tmp_path / "rep"))
    assert code == 0 and "failed cells:" in out and "is neither a preset" in out
    second = tmp_path / "second.yaml"  # another sweep into the same folder: the log keeps the first's cells
    second.write_text(json.dumps(config | {"models": config["models"][:1], "methods": ["ar"]}))
    code, out, _ = bench(monkeypatch, capsys, "sweep", str(second), "--out", str(tmp_path / "o"), "--no-report")
    status = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert code == 0 and len(status["configs"]) == 2
    assert [c["status"] for c in status["cells"].values()] == ["done", "failed"]


def test_bad_options_are_refused_before_any_cell_runs(tmp_path, sweep_file, monkeypatch, capsys):
    config = json.loads(sweep_file.read_text())
    config["methods"] = ["jacobi", {"method": "pld", "grid": {"window": [3]}}]
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    calls = []
    monkeypatch.setattr("bench.runner.run", lambda *a, **k: calls.append(a))
    code, _, err = bench(monkeypatch, capsys, "sweep", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "method pld does not take --window" in err and calls == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [a]\ntasks: [mtbench]\nmethods: [pld]\ncolour: red\n", "unknown key(s) colour"),
        ("models: [a\n", "not valid YAML"),
        ("models: [a]\ntasks: [mtbench]\n", "`methods` must list at least one entry"),
        ("- 1\n", "a sweep config is a mapping"),
    ],
)
def test_bad_sweep_files_get_one_line(tmp_path, monkeypatch, capsys, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    code, _, err = bench(monkeypatch, capsys, "sweep", str(path))
    assert code == 2 and message in err and "Traceback" not in err


def test_impossible_numbers_are_flagged_not_reported(swept, tmp_path):
    out = swept
    runs = rep.find_runs([out])
    pld = next(r for r in runs if r.config["method"] == "pld")
    for record in pld.method:
        record["target_forwards"] = record["new_tokens"] * 2  # tau 0.5: cannot happen
    row = next(r for r in rep.run_rows(pld))
    assert "tau 0.500 below 1" in row["flag"]
    df = rep.table(runs)
    flagged = df[df["flag"] != ""]
    assert set(flagged["method"]) == {"pld"}
    assert flagged["speedup"].isna().all() and flagged["tokens_per_s"].isna().all()
    fast = next(r for r in rep.find_runs([out]) if r.config["method"] == "pld")
    fast.summaries[1]["roofline_tokens_per_s"] = 1e-3
    row = rep.run_rows(fast)[0]  # above the (estimated) roofline: a warning, the numbers stay
    assert "above the estimated roofline" in row["warning"] and row["flag"] == ""
    assert row["speedup"] is not None and row["tokens_per_s"] > 0
    lone = next(r for r in rep.find_runs([out]) if r.config["method"] == "pld")
    lone.baseline = []
    assert "no baseline samples" in rep.run_rows(lone)[0]["flag"]


def test_shipped_reference_covers_the_three_papers():
    reference = load_reference()
    assert {"lookahead", "spec-bench", "llm-to-slm"} <= set(reference["paper"])
    assert reference["claimed"].notna().all() and (reference["claimed"] > 0).all()


def test_check_passes_on_itself_and_fails_on_an_injected_regression(
    swept, tmp_path, tiny_dir, data_dir, monkeypatch, capsys
):
    out = swept
    baseline = tmp_path / "baseline.csv"
    assert bench(monkeypatch, capsys, "check", str(out), "--baseline", str(baseline), "--update")[0] == 0
    code, stdout, _ = bench(monkeypatch, capsys, "check", str(out), "--baseline", str(baseline))
    assert code == 0 and "OK" in stdout

    # Inject a bug: greedy verification accepts one more draft token than the target agrees with.
    real = verify.greedy

    def sloppy(draft, predicted):
        path = real(draft, predicted)
        first = draft.paths[0]
        return path if len(path) >= len(first) else first[: len(path) + 1]

    monkeypatch.setattr(verify, "greedy", sloppy)
    folder = next((out / "mtbench").iterdir())
    broken = tmp_path / "broken" / "mtbench" / folder.name / "pld"
    config = RunConfig(method="pld", task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), limit=3, turns=1,
                       warmup=0, max_new_tokens=12, out=str(broken))  # fmt: skip
    run(config, progress=False)
    code, stdout, _ = bench(monkeypatch, capsys, "check", str(broken.parent), "--baseline", str(baseline))
    assert code == 1
    assert "REGRESSION" in stdout and "exact rate" in stdout and "FAILED" in stdout


def test_check_refuses_a_malformed_baseline(swept, tmp_path, monkeypatch, capsys):
    out = swept
    bad = tmp_path / "b.csv"
    bad.write_text("a,b\n1,2\n")
    code, _, err = bench(monkeypatch, capsys, "check", str(out), "--baseline", str(bad))
    assert code == 2 and "not a report table" in err
    code, _, err = bench(monkeypatch, capsys, "report", str(tmp_path / "none"))
    assert code == 2 and "no such run directory" in err


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("results/configs/*.yaml")), ids=str)
def test_shipped_sweep_configs_are_valid(path, tmp_path):
    from bench.sweep import cells, load_config

    found = cells(load_config(path), tmp_path)  # resolves every cell: unknown or bad options are errors here
    assert found and all(cell.config.model for cell in found)


def test_ray_executor_without_ray_says_how_to_install(sweep_file, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, _, err = bench(monkeypatch, capsys, "sweep", str(sweep_file), "--executor", "ray")
    assert code == 2 and "pip install 'decodebench[ray]'" in err
    code, _, err = bench(monkeypatch, capsys, "sweep", str(sweep_file), "--executor", "slurm")
    assert code == 2 and "'slurm' is not one of 'local', 'ray'" in " ".join(err.replace("│", " ").split())
