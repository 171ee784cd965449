"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.cli import main


def bench(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr); main() returns normally on success."""
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope", "--task", "mtbench"], "unknown method 'nope'"),
        (["--method", "ar", "--task", "nope"], "unknown task 'nope'"),
        (["--method", "ar", "--task", "mtbench", "--limit", "-1"], "--limit must be at least 1"),
        (
            ["--method", "ar", "--task", "mtbench", "--max-new-tokens", "0"],
            "--max-new-tokens must be at least 1",
        ),
        (["--method", "ar", "--task", "mtbench", "--dtype", "float8"], "unknown dtype 'float8'"),
        (["--method", "ar", "--task", "mtbench", "--model", "no-such-preset"], "neither a preset"),
        (["--method", "ar", "--task", "mtbench", "--data-dir", "/no/such/dir"], "does not exist"),
        (["--method", "ar", "--task", "mtbench", "--device", "tpu"], "unknown device 'tpu'"),
        (["--method", "pld", "--task", "mtbench", "-W", "3"], "method pld does not take --window"),
        (["--method", "ar", "--task", "mtbench", "--draft", "x"], "method ar does not take --draft"),
        (["--method", "ar", "--task", "mtbench", "--turns", "0"], "--turns must be at least 1"),
        (["--method", "ar", "--task", "mtbench", "--split", "x"], "task mtbench has no --split"),
    ],
)
def test_bad_run_input(monkeypatch, capsys, data_dir, args, message):
    extra = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
    code, _, err = bench(monkeypatch, capsys, "run", *args, *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_model_folder_that_fails_to_load(monkeypatch, capsys, data_dir, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    args = ["run", "-m", "ar", "-t", "mtbench", "--model", str(tmp_path), "--data-dir", str(data_dir)]
    code, _, err = bench(monkeypatch, capsys, *args)
    assert code == 2 and "could not load model" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps({"question_id": 1, "category": "x", "turns": ["hi"]}) + "\n{broken\n", "line 2 is not valid JSON"),
        (json.dumps({"question_id": 1}) + "\n", "line 1 lacks field(s) category, turns"),
    ],
)
def test_malformed_data_file(monkeypatch, capsys, tmp_path, tiny_dir, content, message):
    (tmp_path / "mt_bench").mkdir()
    (tmp_path / "mt_bench" / "question.jsonl").write_text(content)
    args = ["run", "-m", "ar", "-t", "mtbench", "--model", str(tiny_dir), "--data-dir", str(tmp_path)]
    code, _, err = bench(monkeypatch, capsys, *args)
    assert code == 2 and f"question.jsonl: {message}" in err


def test_unknown_preset_fetch(monkeypatch, capsys):
    code, _, err = bench(monkeypatch, capsys, "models", "fetch", "nope")
    assert code == 2 and "unknown model preset 'nope'" in err


def test_list(monkeypatch, capsys):
    for what, name in (("methods", "ar"), ("tasks", "mtbench"), ("models", "smollm2-135m")):
        monkeypatch.setattr(sys, "argv", ["bench", "list", what])
        main()
        assert name in capsys.readouterr().out


def test_run_end_to_end_as_a_process(tmp_path, tiny_dir, data_dir):
    cmd = [
        sys.executable,
        "-m",
        "bench.cli",
        "run",
        "-m",
        "ar",
        "-t",
        "mtbench",
        "--model",
        str(tiny_dir),
        "--data-dir",
        str(data_dir),
        "--limit",
        "2",
        "--max-new-tokens",
        "6",
        "--out",
        str(tmp_path / "r"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "summary" in proc.stdout and "results:" in proc.stdout
    bad = subprocess.run(cmd[:3] + ["run", "-m", "zzz", "-t", "mtbench"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown method 'zzz'")
    assert bad.stderr.count("\n") == 1


def test_missing_required_option_is_a_usage_error(monkeypatch, capsys):
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "ar")
    assert code == 2 and "Missing option '--task'" in err and "Traceback" not in err
