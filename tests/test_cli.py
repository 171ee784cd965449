"""Bad input gets one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import LOCK, SAMPLES
from tests.test_store import read_only_folder


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


def tiny_run(tiny_dir, data_dir, out, limit: int = 4) -> list[str]:
    """`bench run` of `ar` on the tiny model: `limit` generations (first turns only)."""
    return ["run", "-m", "ar", "-t", "mtbench", "--model", str(tiny_dir), "--data-dir", str(data_dir), "--turns", "1",
            "--limit", str(limit), "--max-new-tokens", "6", "--warmup", "0", "--out", str(out)]  # fmt: skip


def error_line(stderr: str) -> str:
    """The one `error:` line a failed command printed last (library warnings may come before it), no traceback."""
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and [x for x in lines if x.startswith("error:")] == lines[-1:], stderr
    return lines[-1]


def stored_keys(out: Path) -> list[tuple[str, str]]:
    return [(r["role"], r["prompt_id"]) for r in map(json.loads, (out / SAMPLES).read_text().splitlines())]


def test_a_second_run_on_the_same_directory_is_refused(monkeypatch, capsys, tmp_path, tiny_dir, data_dir):
    """A sweep launched twice: the second `bench run` refuses at once, naming the first one's pid; once the first
    is killed, its stale lock is taken over and the run finishes with each generation stored once."""
    out, cli = tmp_path / "r", [sys.executable, "-m", "bench.cli"]
    first = subprocess.Popen([*cli, *tiny_run(tiny_dir, data_dir, out)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / LOCK).exists() and (out / LOCK).read_text() == f"{first.pid}\n"):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # it holds the lock and stays mid-run
        second = subprocess.run([*cli, *tiny_run(tiny_dir, data_dir, out)], capture_output=True, text=True)
        refusal = f"error: {out} is in use by another bench process (pid {first.pid})"
        assert second.returncode == 2 and error_line(second.stderr).startswith(refusal)
    finally:
        first.kill()
        first.communicate()
    assert (out / LOCK).read_text() == f"{first.pid}\n"  # what a killed run leaves behind
    code, _, err = bench(monkeypatch, capsys, *tiny_run(tiny_dir, data_dir, out))
    assert code == 0, err
    keys = stored_keys(out)
    assert len(keys) == len(set(keys)) == 4 and not (out / LOCK).exists()


def test_out_below_a_file(monkeypatch, capsys, tmp_path, tiny_dir, data_dir):
    (tmp_path / "file").write_text("in the way\n")
    code, _, err = bench(monkeypatch, capsys, *tiny_run(tiny_dir, data_dir, tmp_path / "file" / "run"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: cannot create or lock the run directory") and "file is a file, not a folder" in err


def test_out_in_a_read_only_folder(monkeypatch, capsys, tmp_path, tiny_dir, data_dir):
    code, _, err = bench(monkeypatch, capsys, *tiny_run(tiny_dir, data_dir, read_only_folder(tmp_path) / "run"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: cannot create or lock the run directory")


def test_a_full_disk_mid_run_keeps_the_finished_records(monkeypatch, capsys, tmp_path, tiny_dir, data_dir):
    """The samples file may not grow past its size plus 64 bytes (RLIMIT_FSIZE) while the run resumes: one error
    line, exit 2, the finished records byte for byte; with room again the same command finishes the run."""
    out = tmp_path / "r"
    assert bench(monkeypatch, capsys, *tiny_run(tiny_dir, data_dir, out, limit=2))[0] == 0
    before = (out / SAMPLES).read_bytes()
    limit = len(before) + 64

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "bench.cli", *tiny_run(tiny_dir, data_dir, out)]
    full = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_files)
    assert full.returncode == 2
    assert error_line(full.stderr).startswith(f"error: cannot write {out / SAMPLES}: File too large; the 2 records")
    assert (out / SAMPLES).read_bytes() == before
    assert bench(monkeypatch, capsys, *tiny_run(tiny_dir, data_dir, out))[0] == 0
    assert (out / SAMPLES).read_bytes().startswith(before) and len(set(stored_keys(out))) == 4
