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
train_app = typer.Typer(no_args_is_help=True, help="Fine-tune LLM-to-SLM, or the SLM alone as its baseline.")
app.add_typer(train_app, name="train")
console = Console(width=None if sys.stdout.isatty() else 120)


class Listing(StrEnum):
    methods = "methods"
    tasks = "tasks"
    models = "models"


@app.command()
def run(
    method: str = typer.Option(..., "--method", "-m", help="Decoding method (see `bench list methods`)."),
    task: str = typer.Option(..., "--task", "-t", help="Task (see `bench list tasks`)."),
    model: str | None = typer.Option(
        None, help=f"Preset name, hub id or local folder (default: --checkpoint's LLM, else {models.DEFAULT_MODEL})."
    ),
    draft: str | None = typer.Option(None, help="Draft model (preset, hub id or folder) for speculative methods."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    device_map: str | None = typer.Option(None, help="auto: place a large target across this node's GPUs."),
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
    checkpoint: str | None = typer.Option(None, help="llm2slm: a checkpoint folder from `bench train llm2slm`."),
) -> None:
    """Run a method on a task; resumes the run directory if it exists with the same config."""
    from bench.runner import RunConfig
    from bench.runner import run as run_bench

    if model is None:
        from methods.llm2slm import checkpoint_llm

        model = checkpoint_llm(checkpoint) if checkpoint else models.DEFAULT_MODEL
    config = RunConfig(
        method=method,
        task=task,
        model=model,
        draft=draft,
        dtype=dtype,
        device=device,
        device_map=device_map,
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
            checkpoint=checkpoint,
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


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them (searched recursively)."),
    out: Path = typer.Option(Path("runs/report"), help="Folder for summary.csv, summary.md and the plots."),
    against: list[str] = typer.Option([], help="Compare with a paper's numbers: lookahead, spec-bench, llm-to-slm."),
    plots: bool = typer.Option(True, help="Write the PNG figures."),
) -> None:
    """Tables (CSV + markdown), plots and paper-vs-measured comparisons from finished runs."""
    write_report(runs, out, against, plots)


def write_report(runs: list[Path], out: Path, against: list[str], plots: bool) -> None:
    """summary.csv, summary.md, against-PAPER.csv and the figures in `out`; the tables on stdout."""
    from bench import report as rep

    found = rep.find_runs(runs)
    df = rep.table(found)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "summary.csv", index=False)
    text = rep.markdown(df)
    sections = [f"# decodebench report\n\n{len(found)} run directories.\n\n{text}\n"]
    typer.echo(text)
    for row in df[df["flag"] != ""].itertuples():
        typer.echo(f"flagged: {row.method} {row.settings} on {row.task} ({row.run}): {row.flag}")
    failed = rep.failed_cells(runs)
    if failed:
        lines = [f"- {cell}: {reason}" for cell, reason in failed]
        sections.append("## Failed cells\n\n" + "\n".join(lines) + "\n")
        typer.echo("failed cells:\n" + "\n".join(lines))
    for paper in against:
        joined = rep.against(df, paper)
        joined.to_csv(out / f"against-{paper}.csv", index=False)
        table = joined.astype(object).where(joined.notna(), "").to_markdown(index=False, floatfmt=".3g")
        sections.append(f"## Published ({paper}) vs. measured\n\n{table}\n")
        typer.echo(f"\n{paper}: published vs. measured\n{table}")
    if plots:
        from bench.plots import all_plots

        made = all_plots(df, found, out)
        sections.append("## Figures\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in made) + "\n")
    (out / "summary.md").write_text("\n".join(sections))
    typer.echo(f"report: {out}")


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="A sweep file (YAML; see results/configs/)."),
    out: Path | None = typer.Option(None, help="Results tree (default: the file's `out`, else runs/sweeps/NAME)."),
    report: bool = typer.Option(True, help="Write the report (CSV, markdown, plots) into OUT/report at the end."),
    executor: str = typer.Option("local", help="local (this process) or ray (one Ray task per cell)."),
    address: str | None = typer.Option(None, help="ray: the cluster to join (auto or HOST:PORT; default: start one)."),
    max_retries: int = typer.Option(0, help="Retries of a failing cell (error, lost worker) before it is recorded."),
) -> None:
    """Run a grid of cells into one results tree; finished cells are skipped, one AR baseline per model/task."""
    from bench.sweep import run_sweep

    status = run_sweep(config, out, sys.stderr.isatty(), typer.echo, executor, address, max_retries)
    failed = {k: v for k, v in status["cells"].items() if v["status"] == "failed"}
    typer.echo(f"sweep: {len(status['cells']) - len(failed)} cells done, {len(failed)} failed; {status['root']}")
    for key, cell in failed.items():
        typer.echo(f"failed: {key}: {cell['reason']}")
    if report:
        write_report([Path(status["root"])], Path(status["root"]) / "report", [], plots=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def check(
    runs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them."),
    baseline: Path = typer.Option(..., help="Baseline table: a `bench report` summary.csv (results/baselines/)."),
    tau_tolerance: float = typer.Option(0.05, help="Relative tau drop allowed."),
    quality_tolerance: float = typer.Option(1.0, help="Quality drop allowed, in metric points."),
    speedup_band: float = typer.Option(0.5, help="Relative speedup drop allowed (wide: timing varies by machine)."),
    speed: bool = typer.Option(True, help="Also check speedups (off on machines unlike the baseline's)."),
    update: bool = typer.Option(False, help="Write the measured table as the new baseline instead of checking."),
) -> None:
    """Exit 1 when exactness, tau or quality regress against the baseline (or a speedup falls out of its band)."""
    import pandas as pd

    from bench import report as rep
    from bench.check import Tolerance, regressions

    df = rep.table(rep.find_runs(runs))
    if update:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(baseline, index=False)
        typer.echo(f"baseline written: {baseline} ({len(df)} rows)")
        return
    if not baseline.exists():
        raise BenchError(f"no such baseline table: {baseline} (create one with --update)")
    try:
        expected = pd.read_csv(baseline)
    except (ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"{baseline}: not a readable CSV ({exc})") from None
    missing = {"model", "method", "settings", "task", "category", "dtype", "tau"} - set(expected.columns)
    if missing:
        raise BenchError(f"{baseline}: not a report table (missing columns {', '.join(sorted(missing))})")
    hard, slow = regressions(df, expected, Tolerance(tau_tolerance, quality_tolerance, speedup_band))
    for line in hard:
        typer.echo(f"REGRESSION {line}")
    for line in slow if speed else []:
        typer.echo(f"SPEED REGRESSION {line}")
    checked = int((df["method"] != "ar").sum())
    failed = bool(hard) or (speed and bool(slow))
    typer.echo(f"check: {checked} rows against {baseline}: " + ("FAILED" if failed else "OK"))
    if failed:
        raise typer.Exit(1)


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


# Options shared by both `bench train` commands (typer accepts one declaration in several signatures).
_SLM = typer.Option(..., help="The small model: preset, hub id or local folder (decoder-only).")
_TASK = typer.Option(..., "--task", "-t", help="wmt or cnndm; trains on a training split, never the evaluation one.")
_OUT = typer.Option(..., help="Checkpoint folder; the same command again resumes it.")
_TRAIN_SPLIT = typer.Option(None, help="Training split (wmt: newstest2016; cnndm: validation).")
_EVAL_SAMPLES = typer.Option(32, help="Last N examples of the training split, held out for the eval loss.")
_STEPS = typer.Option(200, help="Optimizer steps (a resumed run continues up to this many).")
_BATCH_SIZE = typer.Option(8, help="Examples per step.")
_LR = typer.Option(1e-4, help="AdamW learning rate (10 warm-up steps, then constant).")
_SLM_TUNING = typer.Option("full", help="full, lora or frozen (llm2slm only: train the projector alone).")
_MAX_PROMPT = typer.Option(1024, help="Skip examples whose prompt has more tokens.")
_MAX_ANSWER = typer.Option(128, help="Truncate answers to this many tokens.")
_SEED = typer.Option(0, help="Seed of the initialisation and the data order.")
_DATA_DIR = typer.Option(None, help="Folder with the task data (else $DECODEBENCH_DATA, else hub).")
_EVAL_EVERY = typer.Option(50, help="Evaluate every K steps (0: only before the first and after the last).")
_SAVE_EVERY = typer.Option(50, help="Save a checkpoint every K steps (and after the last).")
_THREADS = typer.Option(None, help="CPU threads for torch.")


@train_app.command("llm2slm")
def train_llm2slm(
    llm: str = typer.Option(..., help="The frozen large model: preset, hub id or local folder."),
    slm: str = _SLM,
    task: str = _TASK,
    out: str = _OUT,
    mode: str = typer.Option("add", help="add the projected LLM features to the prompt embeddings, or replace them."),
    train_split: str | None = _TRAIN_SPLIT,
    eval_samples: int = _EVAL_SAMPLES,
    steps: int = _STEPS,
    batch_size: int = _BATCH_SIZE,
    lr: float = _LR,
    slm_tuning: str = _SLM_TUNING,
    max_prompt_tokens: int = _MAX_PROMPT,
    max_answer_tokens: int = _MAX_ANSWER,
    seed: int = _SEED,
    data_dir: str | None = _DATA_DIR,
    eval_every: int = _EVAL_EVERY,
    save_every: int = _SAVE_EVERY,
    threads: int | None = _THREADS,
) -> None:
    """Train the projector (and adapter) and the SLM on the frozen LLM's prompt encodings."""
    _train("llm2slm", **locals())  # the parameters, exactly


@train_app.command("slm")
def train_slm(
    slm: str = _SLM,
    task: str = _TASK,
    out: str = _OUT,
    train_split: str | None = _TRAIN_SPLIT,
    eval_samples: int = _EVAL_SAMPLES,
    steps: int = _STEPS,
    batch_size: int = _BATCH_SIZE,
    lr: float = _LR,
    slm_tuning: str = _SLM_TUNING,
    max_prompt_tokens: int = _MAX_PROMPT,
    max_answer_tokens: int = _MAX_ANSWER,
    seed: int = _SEED,
    data_dir: str | None = _DATA_DIR,
    eval_every: int = _EVAL_EVERY,
    save_every: int = _SAVE_EVERY,
    threads: int | None = _THREADS,
) -> None:
    """The baseline: the same SLM fine-tuned on the same data without the LLM; writes a plain model folder."""
    _train("slm", **locals())  # the parameters, exactly


def _train(kind: str, **options: object) -> None:
    from bench.train import HISTORY_FILE, TrainConfig, train

    result = train(TrainConfig(kind=kind, **options), progress=sys.stderr.isatty())
    losses = [r["eval_loss"] for r in result.history if r["eval_loss"] is not None]
    summary = f"; eval loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    console.print(f"trained to step {result.step}{summary}")
    console.print(f"checkpoint: {result.out} (loss history: {result.out / HISTORY_FILE})")


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort exception classes of click and of typer's vendored click, where present."""
    import importlib

    usage, abort = [], []
    for name in ("click", "typer._click"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(module.ClickException)
        abort.extend(m.Abort for m in (module, module.exceptions) if hasattr(m, "Abort"))
    return tuple(usage), tuple(abort)


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
    except Exception as exc:  # click usage errors (typer >= 0.29 vendors its own click as typer._click)
        usage, abort = _click_errors()
        if isinstance(exc, usage):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, abort):
            raise SystemExit(130) from None
        raise
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
