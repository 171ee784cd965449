"""`bench run`, built when it is invoked: fixed options in panels (Method, Model, Task, Sampling, Output) plus one
flag per option that a registered method or task declares, shown in its family's panel. A new method's options
appear here with no edit to this file."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from enum import StrEnum
from typing import Any, get_type_hints

import typer
from rich.console import Console
from rich.table import Table
from typer.models import CommandInfo

from core.errors import BenchError
from core.kernels import KERNELS
from core.options import Spec
from core.presets import DEFAULT_MODEL, DTYPE_NAMES
from core.schemes import SCHEMES
from tasks.chat import shipped

Dtype = StrEnum("Dtype", {name: name for name in DTYPE_NAMES})
Kernels = StrEnum("Kernels", {name: name for name in KERNELS})
Quant = StrEnum("Quant", {name: name for name in SCHEMES})
Device = StrEnum("Device", {name: name for name in ("cpu", "cuda", *(f"cuda:{i}" for i in range(8)))})


def _fixed(
    method: str = typer.Option(
        ..., "--method", "-m", help="Decoding method (`bench list methods`).", rich_help_panel="Method"
    ),
    baseline: bool = typer.Option(
        True, help="Also run the `ar` baseline on the same samples, interleaved.", rich_help_panel="Method"
    ),
    model: str | None = typer.Option(
        None,
        help=f"Preset, hub id or local folder (default: the method's, else {DEFAULT_MODEL}).",
        rich_help_panel="Model",
    ),
    draft: str | None = typer.Option(
        None, help="Draft model (preset, hub id or folder) for methods that use one.", rich_help_panel="Model"
    ),
    dtype: Dtype = typer.Option("float32", help="Weights and activations dtype.", rich_help_panel="Model"),
    device: Device = typer.Option("cpu", help="Where the models run.", rich_help_panel="Model"),
    device_map: str | None = typer.Option(
        None, help="auto: place a large target across this node's GPUs.", rich_help_panel="Model"
    ),
    threads: int | None = typer.Option(
        None, help="torch CPU threads (recorded; default: torch's).", rich_help_panel="Model"
    ),
    kernels: Kernels = typer.Option(
        "aten",
        help="Linear-layer kernels of both lanes: aten (MKL/cuBLAS) or onednn (CPU; `bench profile` "
        "shows which is faster here).",
        rich_help_panel="Model",
    ),
    compile: bool = typer.Option(
        False,
        "--compile",
        help="Compiled forwards (torch.compile on a static KV cache, query lengths padded to buckets) for the method "
        "and its AR baseline alike; compiled before timing (compile_s). hf: transformers' static cache + compile.",
        rich_help_panel="Model",
    ),
    quant: Quant = typer.Option(
        "none",
        help="Quantize the method's target (torchao / PyTorch kernels; docs/quantization.md): int8-wo, int4-wo "
        "(weight-only), int8-dyn (int8 activations too). The AR baseline stays full precision: the speedup, the "
        "exactness audit and the quality delta are against it.",
        rich_help_panel="Model",
    ),
    draft_quant: Quant = typer.Option(
        "none",
        help="Quantize the draft model (`--draft self --draft-quant int4-wo`: the target's own quantized copy drafts).",
        rich_help_panel="Model",
    ),
    batch_size: int = typer.Option(
        1,
        help="Prompts decoded at once by both lanes (left-padded; ar and hf; first turns only).",
        rich_help_panel="Task",
    ),
    perplexity: int = typer.Option(
        0,
        help="Also score each lane's target: perplexity on the first N newstest2014 English references.",
        rich_help_panel="Output",
    ),
    task: str = typer.Option(..., "--task", "-t", help="Task (`bench list tasks`).", rich_help_panel="Task"),
    limit: int | None = typer.Option(None, help="Use the first N samples of the task.", rich_help_panel="Task"),
    turns: int | None = typer.Option(
        None, help="At most N turns of multi-turn tasks (MT-bench has 2).", rich_help_panel="Task"
    ),
    max_new_tokens: int = typer.Option(128, help="Maximum new tokens per generation.", rich_help_panel="Task"),
    chat_template: str = typer.Option(
        "hf",
        help=f"Prompt format: hf (the tokenizer's own chat template; plain text without one), none (plain text), "
        f"{', '.join(shipped())} (shipped FastChat formats) or a .jinja file.",
        rich_help_panel="Task",
    ),
    system_prompt: str | None = typer.Option(
        None, help="System message of the chat template (replaces its default).", rich_help_panel="Task"
    ),
    data_dir: str | None = typer.Option(
        None, help="Folder with the task data (else $DECODEBENCH_DATA, else hub).", rich_help_panel="Task"
    ),
    temperature: float = typer.Option(0.0, help="0 for greedy decoding; > 0 samples.", rich_help_panel="Sampling"),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold.", rich_help_panel="Sampling"),
    top_k: int = typer.Option(0, help="Top-k sampling (0: off).", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, help="Seed of the sampling generator.", rich_help_panel="Sampling"),
    out: str | None = typer.Option(
        None, help="Run directory (default: runs/TASK/METHOD-MODEL-DTYPE-HASH).", rich_help_panel="Output"
    ),
    warmup: int = typer.Option(1, help="Untimed warm-up generations before measuring.", rich_help_panel="Output"),
    repeats: int = typer.Option(
        1,
        help="Generate each prompt K times (interleaved with the baseline's); reports the spread.",
        rich_help_panel="Output",
    ),
) -> None:
    """The fixed options of `bench run` (a signature only)."""


def _merged_specs(owners: list[tuple[str, str, list[Spec]]]) -> dict[str, tuple[Spec, str, list[str]]]:
    """Each option name once: (its spec, its panel, "owner default" notes) over every method or task taking it;
    the helps of owners that word it differently are joined."""
    merged: dict[str, tuple[Spec, str, list[str]]] = {}
    for owner, panel, specs in owners:
        for spec in specs:
            first, first_panel, notes = merged.setdefault(spec.name, (spec, panel, []))
            if first.type is not spec.type:
                raise BenchError(f"option --{spec.name} has two types ({first.type.__name__}, {spec.type.__name__})")
            if spec.help not in first.help:
                merged[spec.name] = (dataclasses.replace(first, help=f"{first.help}; {spec.help}"), first_panel, notes)
            notes.append(f"{owner} {spec.default}")
    return merged


def _parameter(spec: Spec, panel: str, notes: list[str]) -> inspect.Parameter:
    decls = [f"{spec.flag}/--no-{spec.flag[2:]}" if spec.type is bool else spec.flag, *spec.flags]
    info = typer.Option(None, *decls, help=f"{spec.help} (default: {', '.join(notes)})", rich_help_panel=panel)
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=spec.type | None)


def option_parameters() -> tuple[list[inspect.Parameter], set[str], set[str]]:
    """The flags of every registered method's and task's options, and the names that are method / task options."""
    from methods.base import METHODS
    from tasks.base import TASKS

    methods = [(n, f"Method options: {c.family or n}", c.Options.specs()) for n, c in METHODS]
    tasks = [(n, "Task", c.Options.specs()) for n, c in TASKS]
    method_specs, task_specs = _merged_specs(methods), _merged_specs(tasks)
    clash = (set(method_specs) & set(task_specs)) | ((set(method_specs) | set(task_specs)) & set(_fixed_names()))
    if clash:
        raise BenchError(f"options declared twice (method, task or fixed `bench run` option): {', '.join(clash)}")
    params = [_parameter(*v) for v in task_specs.values()] + [_parameter(*v) for v in method_specs.values()]
    return params, set(method_specs), set(task_specs)


def _fixed_names() -> list[str]:
    return list(inspect.signature(_fixed).parameters)


def run_command(help_text: str) -> Any:
    """The full click command of `bench run`."""
    from bench.cli import guarded

    extra, method_names, task_names = option_parameters()
    hints = get_type_hints(_fixed)
    fixed = [p.replace(annotation=hints[p.name]) for p in inspect.signature(_fixed).parameters.values()]

    def run(**values: Any) -> None:
        execute(values, method_names, task_names)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in fixed] + extra
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    info = CommandInfo(name="run", callback=guarded(run), help=help_text)
    return typer.main.get_command_from_info(info, pretty_exceptions_short=True, rich_markup_mode="rich")


def execute(values: dict[str, Any], method_names: set[str], task_names: set[str]) -> None:
    """Build the run config from the parsed values, run it, print the summary table."""
    from bench.runner import RunConfig, run

    given = {k: v.value if isinstance(v, StrEnum) else v for k, v in values.items()}
    config = RunConfig(
        options={k: given.pop(k) for k in method_names if given[k] is not None},
        task_options={k: given.pop(k) for k in task_names if given[k] is not None},
        **{k: v for k, v in given.items() if k not in method_names | task_names},
    )
    result = run(config, progress=sys.stderr.isatty())
    print_summary(result.summaries, config.task)
    Console(width=None if sys.stdout.isatty() else 120).print(f"results: {result.out}")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(summaries: list[dict[str, Any]], task: str) -> None:
    """The summary rows as a table, then each row's quality metrics (those the task declares) and the roofline."""
    from tasks.base import TASKS

    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title="summary")
    columns = ("role", "method", "samples", "tokens", "tok/s", "tau", "accept", "speedup", "95% CI", "exact",
               "ttft ms", "tpot ms")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for s in summaries:
        if s.get("samples"):
            ci = f"{s['speedup_ci_low']:.2f}-{s['speedup_ci_high']:.2f}" if s.get("speedup") is not None else "-"
            table.add_row(s["role"], s["method"], str(s["samples"]), str(s["new_tokens"]),
                          _fmt(s["tokens_per_s"], ".2f"), _fmt(s["tau"], ".3f"), _fmt(s.get("acceptance_rate"), ".2f"),
                          _fmt(s["speedup"], ".3f"), ci, _fmt(s["exact_rate"], ".2f"), _fmt(s["ttft_ms_median"], ".1f"),
                          _fmt(s["tpot_ms_median"], ".1f"))  # fmt: skip
    console.print(table)
    metrics = [m.name for m in TASKS.get(task).metrics]
    for s in summaries:
        scores = ", ".join(f"{k} {s[k]:.2f}" for k in metrics if s.get(k) is not None)
        if scores:
            console.print(f"quality ({s['role']}, {s['method']}): {scores}")
    for s in summaries:
        if s.get("compile_s") is not None:
            console.print(f"compile ({s['role']}, {s['method']}): {s['compile_s']:.1f} s before timing")
    ar_row = next((s for s in summaries if s.get("roofline_fraction")), None)
    if ar_row:
        console.print(f"roofline: {ar_row['roofline_tokens_per_s']:.1f} tok/s; "
                      f"autoregressive reaches {ar_row['roofline_fraction']:.1%} of it")  # fmt: skip
