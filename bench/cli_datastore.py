"""`bench datastore build`: tokenize a corpus into a REST datastore (bench.datastore) for `bench run --method rest`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer


def build_command(
    model: str = typer.Option(..., help="Preset, hub id or local folder whose tokenizer tokenizes the corpus."),
    sources: list[Path] = typer.Option(
        ...,
        "--from",
        help="A source file (repeat for more): .jsonl(.gz) (one field per record) or plain text (one document "
        "per paragraph). Training-side text only, never a task's evaluation samples.",
    ),
    out: Path = typer.Option(..., help="The datastore folder (tokens, suffix array, datastore.json)."),
    field: str | None = typer.Option(None, help="The jsonl field holding the text (default: text, content or en)."),
    max_tokens: int | None = typer.Option(None, help="Keep at most this many tokens (the first ones)."),
) -> None:
    """Tokenize text files with a model's tokenizer into a REST datastore (for `bench run --method rest`)."""
    from bench.datastore import build

    record = build(model, sources, out, field, max_tokens, typer.echo)
    typer.echo(
        f"datastore: {out} ({record['tokens']} tokens from {len(record['sources'])} of {len(sources)} source files, "
        f"{record['bytes']} B, {record['build_s']:.1f} s)"
    )


def datastore_app(guard: Callable[[Callable[..., None]], Callable[..., None]]) -> typer.Typer:
    """The `bench datastore` group, its commands wrapped in the CLI's `guard` (`error:` lines, exit 2)."""
    app = typer.Typer(no_args_is_help=True, help="REST datastores: a corpus tokenized with a model's tokenizer.")
    app.command("build")(guard(build_command))
    return app
