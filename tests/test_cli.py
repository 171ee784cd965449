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
        (["--method", "ar", "--task", "mtbench", "--model", "no-such-preset"], "neither a preset"),
        (["--method", "ar", "--task", "mtbench", "--data-dir", "/no/such/dir"], "does not exist"),
        (["--method", "pld", "--task", "mtbench", "-W", "3"], "method pld does not take --window"),
        (["--method", "ar", "--task", "mtbench", "--draft", "x"], "method ar does not take --draft"),
        (["--method", "ar", "--task", "mtbench", "--turns", "0"], "--turns must be at least 1"),
        (["--method", "ar", "--task", "mtbench", "--split", "x"], "task mtbench does not take --split"),
        (["--method", "ar", "--task", "wmt", "--split", "x"], "unknown wmt split 'x'"),
        (["--method", "lookahead", "--task", "mtbench", "-N", "1"], "--ngram must be at least 2 (got 1)"),
        (["--method", "speculative", "--task", "mtbench"], "speculative needs a draft model"),
        (["--method", "llm2slm", "--task", "mtbench"], "method llm2slm needs --checkpoint"),
        (["--method", "ar", "--task", "mtbench", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_run_input(monkeypatch, capsys, data_dir, args, message):
    extra = [] if "--data-dir" in args else ["--data-dir", str(data_dir)]
    code, _, err = bench(monkeypatch, capsys, "run", *args, *extra)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float8"], "'float8' is not one of 'float32', 'bfloat16', 'float16'"),
        (["--device", "tpu"], "'tpu' is not one of 'cpu', 'cuda'"),
        (["--window", "many"], "unable to parse string as an integer"),
        (["--no-such-flag"], "No such option: --no-such-flag"),
    ],
)
def test_usage_errors(monkeypatch, capsys, args, message):
    """Parsing errors are click's own usage errors: exit 2, the reason, no traceback."""
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "ar", "--task", "mtbench", *args)
    assert code == 2 and message in " ".join(err.replace("│", " ").split()) and "Traceback" not in err


def test_corrupt_gzip_data_file(monkeypatch, capsys, tmp_path, tiny_dir):
    (tmp_path / "humaneval").mkdir()
    (tmp_path / "humaneval" / "HumanEval.jsonl.gz").write_text('{"task_id": "x"}\n')  # not gzip
    args = ["run", "-m", "ar", "-t", "humaneval", "--model", str(tiny_dir), "--data-dir", str(tmp_path)]
    code, _, err = bench(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "HumanEval.jsonl.gz: not a valid gzip file" in err


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
    """Methods with their options and defaults, tasks with their metrics and options, model presets."""
    expected = {
        "methods": ("ar", "--window 5, --ngram 3, --guess 5, --prompt-ngrams False", "needs --draft"),
        "tasks": ("mtbench", "bleu (higher is better)", "--split newstest2014"),
        "models": ("smollm2-135m",),
        "templates": ("hf ", "none ", "vicuna_v1.1", "FastChat's `vicuna_v1.1` conversation", "llama-2-chat"),
    }
    for what, names in expected.items():
        code, out, _ = bench(monkeypatch, capsys, "list", what)
        assert code == 0 and all(name in out for name in names)


def test_help_is_fast_and_does_not_import_torch():
    """`bench --help` and `bench list models` answer from the CLI module alone (no torch, no transformers)."""
    probe = "import sys; from bench.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).returncode == 0
    for args in (["--help"], ["list", "models"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "bench.cli", *args], capture_output=True, text=True
        )
        assert proc.returncode == 0 and " torch" not in proc.stderr and "transformers" not in proc.stderr


def test_run_help_shows_method_panels(monkeypatch, capsys):
    code, out, _ = bench(monkeypatch, capsys, "run", "--help")
    assert code == 0
    for panel in ("Method options: lookahead", "Method options: prompt lookup", "Model", "Sampling", "Output"):
        assert panel in out
    assert "--max-ngram" in out and "--threads" in out


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
