"""`bench profile`: measure and store a model's forward cost curve (bench.profile), print it, draw it."""

from __future__ import annotations

import platform
from pathlib import Path

import typer

from core.errors import BenchError

QUERIES_HELP = "Query tokens per forward, comma-separated (default: 1-6,8,10,12,16,24,32,48,64)."


def _numbers(text: str | None, option: str) -> list[int] | None:
    """A comma-separated list of positive integers (None: not given)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{option} takes comma-separated integers, e.g. 1,2,4 (got {text!r})") from None
    if not values or min(values) < 1:
        raise BenchError(f"{option} takes integers of at least 1 (got {text!r})")
    return values


def profile_command(
    model: str | None = typer.Option(None, help="Preset, hub id or local folder (default: smollm2-135m)."),
    shape: str | None = typer.Option(
        None, help="A random-weight model of a named shape instead: tiny, smollm2-135m, vicuna-7b (the papers' setup)."
    ),  # fmt: skip
    draft: str | None = typer.Option(None, help="Also profile this draft model (stored under its own name)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    kernels: str | None = typer.Option(
        None, help="Linear kernels to compare, comma-separated (aten,onednn; default: every one the device has)."
    ),  # fmt: skip
    compile_: bool = typer.Option(False, "--compile", help="Profile the compiled forward of `bench run --compile`."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's)."),
    contexts: str | None = typer.Option(
        None, help="Cached tokens before the step, comma-separated (default: 200,1000)."
    ),  # fmt: skip
    queries: str | None = typer.Option(None, help=QUERIES_HELP),
    repeats: int = typer.Option(10, help="Timed forwards per cell (the median is kept)."),
    out: Path | None = typer.Option(None, help="Also write profile.csv, profile.json and profile.png here."),
) -> None:
    """Measure the forward cost c(q, L) of q query tokens on L cached tokens; store it for `bench report`
    (predicted speedups) and `--budget auto`."""
    import torch

    from bench import environment
    from bench import profile as prof
    from core import kernels as kernel_lib
    from core import models

    if threads is not None and threads < 1 or repeats < 1:
        raise BenchError("--threads and --repeats must be at least 1")
    if model and shape:
        raise BenchError("give --model or --shape, not both")
    context_list = _numbers(contexts, "--contexts") or list(prof.CONTEXTS)
    query_list = sorted(set(_numbers(queries, "--queries") or prof.QUERIES) | {1})
    torch_device = models.resolve_device(device)
    names = (
        [k.strip() for k in kernels.split(",")]
        if kernels
        else list(kernel_lib.KERNELS if torch_device.type == "cpu" else ("aten",))
    )
    for name in names:
        kernel_lib.check(name, torch_device)
    if threads:
        torch.set_num_threads(threads)
    forward = prof.forward_factory(compile_)
    targets = [(f"shape-{shape}", None)] if shape else [(model or "smollm2-135m", None)]
    targets += [(draft, "draft")] if draft else []
    for name, role in targets:
        if name.startswith("shape-"):
            net = prof.random_model(shape or "", models.resolve_dtype(dtype), torch_device)
            label = name
        else:
            loaded = models.load(name, dtype=dtype, device=device)
            net, label = loaded.model, loaded.artifact.get("preset") or Path(name).name
        key = prof.ProfileKey(label, dtype, torch_device.type, compile_, torch.get_num_threads())
        rows = prof.profile(net, names, context_list, query_list, repeats, forward)
        meta = {"role": role or "target", "repeats": repeats, "machine": environment.describe(torch_device),
                "python": platform.python_version()}  # fmt: skip
        rows = prof.save(rows, key, meta, key.folder())
        if out is not None:
            folder = out / key.name() if role else out
            prof.save(rows, key, meta, folder)
            title = f"{label} {dtype} on {meta['machine'].get('device_name', device)}, {key.threads} thread(s)"
            prof.plot(rows, title + (", compiled" if compile_ else ""), folder / "profile.png")
        _print(label, rows, query_list)
        del net


def _print(label: str, rows: list[dict], queries: list[int]) -> None:
    """c(1) in ms and c(q)/c(1) for a few q, per backend and context."""
    shown = [q for q in (2, 4, 8, 16, 32, 64) if q in queries]
    typer.echo(f"{label}: c(1) ms and c(q)/c(1)")
    typer.echo(f"{'backend':>8} {'cached':>7} {'c(1) ms':>8} " + " ".join(f"{'q=' + str(q):>6}" for q in shown))
    for backend, context in sorted({(r["backend"], r["context"]) for r in rows}):
        cells = {r["q"]: r for r in rows if (r["backend"], r["context"]) == (backend, context)}
        ratios = " ".join(f"{cells[q]['ratio']:>6.2f}" if q in cells else f"{'':>6}" for q in shown)
        typer.echo(f"{backend:>8} {context:>7} {cells[1]['ms']:>8.2f} {ratios}")
