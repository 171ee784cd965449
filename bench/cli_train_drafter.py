"""`bench train medusa` and `bench train eagle`: the command line of `bench.train_drafter` (which is imported only
when a command runs, so `bench --help` does not import torch)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer

_MODEL = typer.Option(..., help="The frozen target: preset, hub id or local folder.")
_OUT = typer.Option(..., help="Output folder (loadable by --draft-heads); the same command again resumes it.")
_DATA = typer.Option(
    None,
    help='Prompts instead of the default mix: a jsonl of {"prompt": str} or {"messages": [...]} lines (chat '
    'template), or {"text": str} lines (continued as they stand: code completion).',
)
_DTYPE = typer.Option(
    "float32",
    help="The target's dtype (answers, features, loss). bfloat16: mixed-precision training, fp32 drafter weights.",
)
_DATA_DIR = typer.Option(None, help="Folder with the default mix's data (else $DECODEBENCH_DATA).")
_PROMPTS = typer.Option(
    None,
    help="Training prompts: the default mix's size (256: WMT 2015-2019, GSM8K outside Spec-Bench, TinyStories, in "
    "equal parts), or the first N of --data (default: all).",
)
_ANSWER_TOKENS = typer.Option(128, help="Longest self-distilled answer (the target's greedy output, up to EOS).")
_STEPS = typer.Option(200, help="Optimizer steps (a resumed run continues up to this many).")
_LR = typer.Option(None, help="AdamW learning rate (default: the reference's; warm-up over 10% of the steps).")
_EVAL_SAMPLES = typer.Option(16, help="The last N sequences, held out for the eval loss.")
_EVAL_EVERY = typer.Option(50, help="Evaluate every K steps (0: only before the first and after the last).")
_SAVE_EVERY = typer.Option(50, help="Save the drafter and the optimizer every K steps (and after the last).")
_SEED = typer.Option(0, help="Seed of the prompt mix, the initialisation and the data order.")
_THREADS = typer.Option(None, help="CPU threads for torch.")
_ANSWERS_FROM = typer.Option(
    None, help="Reuse the answers another bench train run (same target, same prompts) generated: its folder."
)


def add_train_commands(train_app: typer.Typer, guarded: Callable[..., Callable[..., None]]) -> None:
    """Register `medusa` and `eagle` on the `bench train` group; `guarded` turns errors into one line."""

    @train_app.command("medusa")
    @guarded
    def train_medusa(
        model: str = _MODEL,
        out: str = _OUT,
        heads: int = typer.Option(
            3,
            help="Medusa heads (the reference's training command trains 3; its published Vicuna heads have 5: each "
            "head holds a hidden x vocab LM head copy, whose logits dominate a CPU step).",
        ),
        layers: int = typer.Option(1, help="ResBlocks per head (the reference's medusa_num_layers, 1)."),
        data: str | None = _DATA,
        dtype: str = _DTYPE,
        data_dir: str | None = _DATA_DIR,
        prompts: int | None = _PROMPTS,
        answer_tokens: int = _ANSWER_TOKENS,
        steps: int = _STEPS,
        batch_size: int = typer.Option(8, help="Sequences per step (the reference's 8 per device)."),
        lr: float | None = _LR,
        eval_samples: int = _EVAL_SAMPLES,
        eval_every: int = _EVAL_EVERY,
        save_every: int = _SAVE_EVERY,
        seed: int = _SEED,
        threads: int | None = _THREADS,
        answers_from: str | None = _ANSWERS_FROM,
    ) -> None:
        """Train Medusa heads (Cai et al. 2024) on the target's own answers; lr 1e-3, AdamW as the reference."""
        options = dict(locals())
        _train("medusa", {"heads": options.pop("heads"), "layers": options.pop("layers")}, options)

    @train_app.command("eagle")
    @guarded
    def train_eagle(
        model: str = _MODEL,
        out: str = _OUT,
        data: str | None = _DATA,
        dtype: str = _DTYPE,
        data_dir: str | None = _DATA_DIR,
        prompts: int | None = _PROMPTS,
        answer_tokens: int = _ANSWER_TOKENS,
        steps: int = _STEPS,
        batch_size: int = typer.Option(4, help="Sequences per step (the reference's bs 4)."),
        lr: float | None = _LR,
        eval_samples: int = _EVAL_SAMPLES,
        eval_every: int = _EVAL_EVERY,
        save_every: int = _SAVE_EVERY,
        seed: int = _SEED,
        threads: int | None = _THREADS,
        answers_from: str | None = _ANSWERS_FROM,
    ) -> None:
        """Train an EAGLE draft layer (Li et al. 2024) on the target's own features; lr 3e-5 as the reference."""
        _train("eagle", {}, dict(locals()))


def _train(kind: str, recipe: dict[str, int], options: dict[str, Any]) -> None:
    from bench.train_drafter import DrafterConfig, train

    result = train(DrafterConfig(kind=kind, recipe=recipe, **options), progress=sys.stderr.isatty())
    losses = [r["eval_loss"] for r in result.history if r["eval_loss"] is not None]
    summary = f"; eval loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    typer.echo(f"trained to step {result.step}{summary}")
    typer.echo(f"drafter: {result.out} (--draft-heads {result.out}; loss curve: {result.out / 'loss.png'})")
