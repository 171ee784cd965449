"""The `bench` command line: each command parses its options and calls the library. Importing this module does
not import torch, so `bench --help` and `bench list models` answer at once; `bench run` builds its options
(one panel per method family) from the registered schemas when it is invoked (`bench.cli_run`)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from bench.cli_datastore import datastore_app
from bench.cli_profile import profile_command
from bench.cli_train_drafter import add_train_commands
from core.errors import BenchError
from core.presets import PRESETS, is_cached
from core.schemes import quiet_torchao

RUN_HELP = "Run a method on a task; resumes the run directory if it exists with the same config."


class BenchGroup(TyperGroup):
    """The top-level group: `run` is a placeholder in listings and is built in full only when it is invoked."""

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name == "run":
            from bench.cli_run import run_command

            command = run_command(RUN_HELP)
        return name, command, rest


app = typer.Typer(cls=BenchGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure fast LLM decoding methods honestly.")  # fmt: skip
models_app = typer.Typer(no_args_is_help=True, help="Model presets and their cache.")
app.add_typer(models_app, name="models")
task_app = typer.Typer(no_args_is_help=True, help="Task self-checks.")
app.add_typer(task_app, name="task")
train_app = typer.Typer(
    no_args_is_help=True, help="Fine-tune LLM-to-SLM (or the SLM alone); train Medusa heads or an EAGLE draft layer."
)
app.add_typer(train_app, name="train")


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """A command whose `BenchError` is one `error:` line and exit 2, and whose interruption says how to resume."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished work is saved; run the same command again to resume", err=True)
            raise SystemExit(130) from None

    return wrapper


class Listing(StrEnum):
    methods = "methods"
    tasks = "tasks"
    models = "models"
    templates = "templates"


class Executor(StrEnum):
    local = "local"
    ray = "ray"


class Mode(StrEnum):
    add = "add"
    replace = "replace"


class Bridge(StrEnum):
    aligned = "aligned"
    adapter = "adapter"


class SlmTuning(StrEnum):
    full = "full"
    lora = "lora"
    frozen = "frozen"


class Paper(StrEnum):
    lookahead = "lookahead"
    spec_bench = "spec-bench"
    llm_to_slm = "llm-to-slm"


@app.command("run", help=RUN_HELP)
def run_placeholder() -> None:
    """Replaced by the full command (`bench.cli_run`) when `bench run` is invoked."""


@app.command()
@guarded
def report(
    runs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them (searched recursively)."),
    out: Path = typer.Option(Path("runs/report"), help="Folder for summary.csv, summary.md and the plots."),
    against: list[Paper] = typer.Option([], help="Compare with a paper's published numbers."),
    plots: bool = typer.Option(True, help="Write the figures."),
    fmt: str = typer.Option("png", "--format", help="Figure file format: png, pdf or svg."),
) -> None:
    """Tables (CSV + markdown), plots and paper-vs-measured comparisons from finished runs."""
    from bench.report import write_report

    write_report(runs, out, [p.value for p in against], plots, typer.echo, fmt)


@app.command()
@guarded
def sweep(
    config: Path = typer.Argument(..., help="A sweep file (YAML; see results/configs/)."),
    out: Path | None = typer.Option(None, help="Results tree (default: the file's `out`, else runs/sweeps/NAME)."),
    report: bool = typer.Option(True, help="Write the report (CSV, markdown, plots) into OUT/report at the end."),
    executor: Executor = typer.Option(Executor.local, help="This process, or one Ray task per cell."),
    address: str | None = typer.Option(None, help="ray: the cluster to join (auto or HOST:PORT; default: start one)."),
    max_retries: int = typer.Option(0, help="Retries of a failing cell (error, lost worker) before it is recorded."),
    fmt: str = typer.Option("png", "--format", help="The report's figure file format: png, pdf or svg."),
) -> None:
    """Run a grid of cells into one results tree; finished cells are skipped, one AR baseline per model/task."""
    from bench.report import write_report
    from bench.sweep import run_sweep

    if report:
        from bench.plot_style import check_format

        check_format(fmt)  # before the cells run, not after
    status = run_sweep(config, out, sys.stderr.isatty(), typer.echo, executor.value, address, max_retries)
    failed = {k: v for k, v in status["cells"].items() if v["status"] == "failed"}
    typer.echo(f"sweep: {len(status['cells']) - len(failed)} cells done, {len(failed)} failed; {status['root']}")
    for key, cell in failed.items():
        typer.echo(f"failed: {key}: {cell['reason']}")
    if report:
        write_report([Path(status["root"])], Path(status["root"]) / "report", [], True, typer.echo, fmt)
    if failed:
        raise typer.Exit(1)


app.command("profile")(guarded(profile_command))
app.add_typer(datastore_app(guarded), name="datastore")
add_train_commands(train_app, guarded)


@app.command()
@guarded
def check(
    runs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them."),
    baseline: Path = typer.Option(..., help="Baseline table: a `bench report` summary.csv (results/baselines/)."),
    tau_tolerance: float = typer.Option(0.05, help="Relative tau drop allowed."),
    quality_tolerance: float = typer.Option(1.0, help="Quality worsening allowed, in metric points."),
    speedup_band: float = typer.Option(0.5, help="Relative speedup drop allowed (wide: timing varies by machine)."),
    speed: bool = typer.Option(True, help="Also check speedups (off on machines unlike the baseline's)."),
    update: bool = typer.Option(False, help="Write the measured table as the new baseline instead of checking."),
) -> None:
    """Exit 1 when exactness, tau or quality regress against the baseline (or a speedup falls out of its band)."""
    from bench import report as rep
    from bench.check import Tolerance, read_baseline, regressions

    df = rep.table(rep.find_runs(runs))
    if update:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(baseline, index=False)
        typer.echo(f"baseline written: {baseline} ({len(df)} rows)")
        return
    hard, slow = regressions(df, read_baseline(baseline), Tolerance(tau_tolerance, quality_tolerance, speedup_band))
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
@guarded
def list_(what: Listing = typer.Argument(..., help="methods, tasks, models or templates")) -> None:
    """Show the registered methods (with their options), tasks (with their metrics), model presets or the chat
    templates `--chat-template` takes."""
    if what is Listing.models:
        rows = [(p.name, p.description + (" [cached]" if is_cached(p) else "")) for p in PRESETS.values()]
    else:
        from bench.listing import methods, tasks, templates

        rows = {Listing.methods: methods, Listing.tasks: tasks, Listing.templates: templates}[what]()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        typer.echo(f"{name:<{width}}  {desc}")


@models_app.command("fetch")
@guarded
def fetch(preset: str = typer.Argument(..., help="An offline preset name (see `bench list models`).")) -> None:
    """Download, verify (sha256) and cache an offline preset as safetensors."""
    from core.models import fetch as fetch_preset

    typer.echo(f"{preset}: {fetch_preset(preset)}")


@task_app.command("check")
@guarded
def task_check(
    name: str = typer.Argument(..., help="The task to check (humaneval: its sandboxed scoring)."),
    data_dir: str | None = typer.Option(None, help="Folder with the task data (else $DECODEBENCH_DATA, else hub)."),
    workers: int = typer.Option(2, help="Sandboxed programs run at a time."),
) -> None:
    """HumanEval: all canonical solutions must pass, hostile completions must fail and leave no trace."""
    from tasks.base import TASKS
    from tasks.humaneval import HumanEval, self_check

    if TASKS.get(name) is not HumanEval:
        raise BenchError(f"task {name!r} has no check; only humaneval has one")

    if not self_check(data_dir, workers, typer.echo):
        raise typer.Exit(1)


# Options shared by both `bench train` commands (typer accepts one declaration in several signatures).
_SLM = typer.Option(..., help="The small model: preset, hub id or local folder (decoder-only).")
_TASK = typer.Option(..., "--task", "-t", help="wmt or cnndm; trains on a training split, never the evaluation one.")
_OUT = typer.Option(..., help="Checkpoint folder; the same command again resumes it.")
_TRAIN_SPLIT = typer.Option(
    None, help="Training split (wmt: newstest2015-2019, a range or one year; cnndm: validation)."
)
_EVAL_SAMPLES = typer.Option(32, help="Last N examples of the training split, held out for the eval loss.")
_STEPS = typer.Option(200, help="Optimizer steps (a resumed run continues up to this many).")
_BATCH_SIZE = typer.Option(8, help="Examples per step.")
_LR = typer.Option(1e-4, help="AdamW learning rate (10 warm-up steps, then constant).")
_SLM_TUNING = typer.Option(SlmTuning.full, help="Train every SLM weight, LoRA adapters, or none (llm2slm only).")
_MAX_PROMPT = typer.Option(1024, help="Skip examples whose prompt has more tokens.")
_MAX_ANSWER = typer.Option(128, help="Truncate answers to this many tokens.")
_SEED = typer.Option(0, help="Seed of the initialisation and the data order.")
_DATA_DIR = typer.Option(None, help="Folder with the task data (else $DECODEBENCH_DATA, else hub).")
_EVAL_EVERY = typer.Option(50, help="Evaluate every K steps (0: only before the first and after the last).")
_SAVE_EVERY = typer.Option(50, help="Save a checkpoint every K steps (and after the last).")
_THREADS = typer.Option(None, help="CPU threads for torch.")


@train_app.command("llm2slm")
@guarded
def train_llm2slm(
    llm: str = typer.Option(..., help="The frozen large model: preset, hub id or local folder."),
    slm: str = _SLM,
    task: str = _TASK,
    out: str = _OUT,
    mode: Mode = typer.Option(Mode.add, help="Add the projected LLM features to the prompt embeddings, or replace."),
    bridge: Bridge = typer.Option(
        Bridge.aligned,
        help="Different tokenizers: the SLM's own prompt tokens plus the projected LLM features over their characters "
        "(aligned, the paper's), or the LLM's tokens through an adapter.",
    ),
    llm_layer: int = typer.Option(
        -1, help="The LLM layer whose features the SLM reads: -1 the last (after the final norm), K block K's output."
    ),
    feature_norm: bool = typer.Option(
        False,
        help="A LayerNorm on the LLM's features before the projector (decoder-only LLMs' hidden states carry a "
        "few huge dimensions, and their inner layers' scale varies by token); recorded in the checkpoint.",
    ),
    cache_features: bool = typer.Option(
        False, help="Keep the LLM's features on disk, keyed by its artifact and layer, for later runs to reuse."
    ),
    train_split: str | None = _TRAIN_SPLIT,
    eval_samples: int = _EVAL_SAMPLES,
    steps: int = _STEPS,
    batch_size: int = _BATCH_SIZE,
    lr: float = _LR,
    slm_tuning: SlmTuning = _SLM_TUNING,
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
@guarded
def train_slm(
    slm: str = _SLM,
    task: str = _TASK,
    out: str = _OUT,
    train_split: str | None = _TRAIN_SPLIT,
    eval_samples: int = _EVAL_SAMPLES,
    steps: int = _STEPS,
    batch_size: int = _BATCH_SIZE,
    lr: float = _LR,
    slm_tuning: SlmTuning = _SLM_TUNING,
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


def _train(kind: str, **options: Any) -> None:
    from bench.train import HISTORY_FILE, TrainConfig, train

    values = {k: v.value if isinstance(v, StrEnum) else v for k, v in options.items()}
    result = train(TrainConfig(kind=kind, **values), progress=sys.stderr.isatty())
    losses = [r["eval_loss"] for r in result.history if r["eval_loss"] is not None]
    summary = f"; eval loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    typer.echo(f"trained to step {result.step}{summary}")
    typer.echo(f"checkpoint: {result.out} (loss history: {result.out / HISTORY_FILE})")


def main() -> None:
    """Entry point. Usage errors are click's (exit 2); a `BenchError` raised outside a command (a plugin that
    fails to load while `bench run` is built) is one `error:` line and exit 2 as well."""
    try:
        quiet_torchao()  # before transformers imports it
        app()
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
