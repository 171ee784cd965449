"""The `bench` command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bench import models
from bench.errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Measure fast LLM decoding methods honestly.")
models_app = typer.Typer(no_args_is_help=True, help="Model presets and their cache.")
app.add_typer(models_app, name="models")
task_app = typer.Typer(no_args_is_help=True, help="Task self-checks.")
app.add_typer(task_app, name="task")
console = Console(width=None if sys.stdout.isatty() else 120)


class Listing(StrEnum):
    methods = "methods"
    tasks = "tasks"
    models = "models"


@app.command()
def run(
    method: str = typer.Option(..., "--method", "-m", help="Decoding method (see `bench list methods`)."),
    task: str = typer.Option(..., "--task", "-t", help="Task (see `bench list tasks`)."),
    model: str = typer.Option(models.DEFAULT_MODEL, help="Preset name, hub id or local folder."),
    draft: str | None = typer.Option(None, help="Draft model (preset, hub id or folder) for speculative methods."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    limit: int | None = typer.Option(None, help="Use the first N samples of the task."),
    turns: int | None = typer.Option(None, help="At most N turns of multi-turn tasks (MT-bench has 2)."),
    split: str | None = typer.Option(None, help="Task split where it applies (wmt: newstest2014|newstest2016)."),
    subset: str | None = typer.Option(None, help="Task subset where it applies (specbench: a category)."),
    max_new_tokens: int = typer.Option(128, help="Maximum new tokens per generation."),
    temperature: float = typer.Option(0.0, help="0 for greedy decoding; > 0 samples."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold (sampling only)."),
    top_k: int = typer.Option(0, help="Top-k sampling (0: off; sampling only)."),
    seed: int = typer.Option(0, help="Seed of the sampling generator."),
    warmup: int = typer.Option(1, help="Untimed warm-up generations before measuring."),
    baseline: bool = typer.Option(True, help="Also run the `ar` baseline on the same samples, interleaved."),
    data_dir: str | None = typer.Option(None, help="Folder with the task data (else $DECODEBENCH_DATA, else hub)."),
    out: str | None = typer.Option(None, help="Run directory (default: runs/TASK/METHOD-MODEL-DTYPE-HASH)."),
    window: int | None = typer.Option(None, "--window", "-W", help="lookahead/jacobi: window size W."),
    ngram: int | None = typer.Option(None, "--ngram", "-N", help="lookahead: n-gram size N."),
    guess: int | None = typer.Option(None, "--guess", "-G", help="lookahead: max n-grams verified per step G."),
    prompt_ngrams: bool | None = typer.Option(None, help="lookahead: seed the n-gram pool from the prompt."),
    num_draft: int | None = typer.Option(None, help="speculative/hf-assisted: draft tokens per step."),
    adaptive: bool | None = typer.Option(None, help="speculative: adapt the draft length (+2 / -1)."),
    max_ngram: int | None = typer.Option(None, help="pld/hf-pld: largest n-gram to match."),
    num_candidates: int | None = typer.Option(None, help="pld/hf-pld: candidate tokens per step."),
) -> None:
    """Run a method on a task; resumes the run directory if it exists with the same config."""
    from bench.runner import RunConfig
    from bench.runner import run as run_bench

    config = RunConfig(
        method=method,
        task=task,
        model=model,
        draft=draft,
        dtype=dtype,
        device=device,
        limit=limit,
        turns=turns,
        split=split,
        subset=subset,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        warmup=warmup,
        baseline=baseline,
        data_dir=data_dir,
        out=out,
        options=method_options(
            window=window,
            ngram=ngram,
            guess=guess,
            prompt_ngrams=prompt_ngrams,
            num_draft=num_draft,
            adaptive=adaptive,
            max_ngram=max_ngram,
            num_candidates=num_candidates,
        ),
    )
    config.validate()
    result = run_bench(config, progress=sys.stderr.isatty())
    print_summary(result.summaries)
    console.print(f"results: {result.out}")


SUMMARY_KEYS = {
    "tokens_per_s", "tau", "ttft_s_median", "tpot_s_median", "exact_rate", "speedup", "roofline_tokens_per_s",
    "roofline_fraction",
}  # fmt: skip


def method_options(**given: object) -> dict[str, object]:
    """The method options the user set; each method rejects options it does not take."""
    return {k: v for k, v in given.items() if v is not None}


def print_summary(summaries: list[dict]) -> None:
    table = Table(title="summary")
    for col in (
        "role",
        "method",
        "samples",
        "tokens",
        "tok/s",
        "tau",
        "speedup",
        "exact",
        "ttft ms",
        "tpot ms",
    ):
        table.add_column(col, justify="right")

    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for s in summaries:
        if not s.get("samples"):
            continue
        table.add_row(
            s["role"],
            s["method"],
            str(s["samples"]),
            str(s["new_tokens"]),
            fmt(s["tokens_per_s"], ".2f"),
            fmt(s["tau"], ".3f"),
            fmt(s["speedup"], ".3f"),
            fmt(s["exact_rate"], ".2f"),
            fmt(s["ttft_s_median"] and s["ttft_s_median"] * 1e3, ".1f"),
            fmt(s["tpot_s_median"] and s["tpot_s_median"] * 1e3, ".1f"),
        )
    console.print(table)
    for s in summaries:
        scores = {k: v for k, v in s.items() if k not in SUMMARY_KEYS and isinstance(v, float)}
        if scores:
            console.print(
                f"quality ({s['role']}, {s['method']}): " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            )
    ar_row = next((s for s in summaries if s.get("roofline_fraction")), None)
    if ar_row:
        console.print(
            f"roofline: {ar_row['roofline_tokens_per_s']:.1f} tok/s; "
            f"autoregressive reaches {ar_row['roofline_fraction']:.1%} of it"
        )


@app.command("list")
def list_(what: Listing = typer.Argument(..., help="methods, tasks or models")) -> None:
    """Show the registered methods, tasks or model presets, one line each."""
    if what is Listing.methods:
        from methods.base import METHODS, get_method

        get_method("ar")
        rows = [(n, c.description) for n, c in sorted(METHODS.items())]
    elif what is Listing.tasks:
        from tasks.base import TASKS, get_task

        get_task("mtbench")
        rows = [(n, c.description) for n, c in sorted(TASKS.items())]
    else:
        rows = [(p.name, p.description + (" [cached]" if _cached(p) else "")) for p in models.PRESETS.values()]
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        typer.echo(f"{name:<{width}}  {desc}")


def _cached(preset: models.Preset) -> bool:
    return preset.offline and (models.cache_dir() / preset.name / "hf" / "artifact.json").exists()


@models_app.command("fetch")
def fetch(
    preset: str = typer.Argument(..., help="An offline preset name (see `bench list models`)."),
) -> None:
    """Download, verify (sha256) and cache an offline preset as safetensors."""
    path: Path = models.fetch(preset)
    typer.echo(f"{preset}: {path}")


@task_app.command("check")
def task_check(
    name: str = typer.Argument(..., help="The task to check (humaneval: its sandboxed scoring)."),
    data_dir: str | None = typer.Option(None, help="Folder with the task data (else $DECODEBENCH_DATA, else hub)."),
    workers: int = typer.Option(2, help="Sandboxed programs run at a time."),
) -> None:
    """HumanEval: all canonical solutions must pass, hostile completions must fail and leave no trace."""
    import os

    from tasks import humaneval
    from tasks.base import get_task
    from tasks.sandbox import isolation_report

    if get_task(name) is not humaneval.HumanEval:
        raise BenchError(f"task {name!r} has no check; only humaneval has one")
    if workers < 1:
        raise BenchError("--workers must be at least 1")
    samples = humaneval.HumanEval(data_dir).load()
    if not samples:
        raise BenchError("the humaneval data has no problems")
    for layer, state in isolation_report().items():
        typer.echo(f"isolation {layer}: {state}")
    results = humaneval.execute(samples, [s.reference for s in samples], workers)
    for sample, result in zip(samples, results, strict=True):
        if not result.passed:
            typer.echo(f"canonical {sample.id}: {result.status} {result.detail}")
    passed = sum(r.passed for r in results)
    typer.echo(f"canonical solutions: {passed}/{len(samples)} passed")
    cases = humaneval.hostile_check(samples[0], workers)
    for case in cases:
        typer.echo(f"hostile {case.name}: {'contained' if case.contained else 'NOT CONTAINED'} - {case.detail}")
    contained = sum(c.contained for c in cases)
    typer.echo(f"hostile cases: {contained}/{len(cases)} contained; harness alive (pid {os.getpid()})")
    ok = passed == len(samples) and contained == len(cases)
    typer.echo("humaneval check: " + ("OK" if ok else "FAILED"))
    if not ok:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)  # with standalone_mode off, click returns typer.Exit codes
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished samples are saved; run the same command again to resume", err=True)
        raise SystemExit(130) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(130) from None
        raise
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
