"""`bench train medusa|eagle`: train Medusa heads or an EAGLE draft layer on a frozen target's own answers.

The pipeline: prompts -> the target's greedy answers -> the target's features of every prompt + answer, computed
once (`bench.drafter_data`) -> AdamW on the cached features with the kind's loss (`methods.medusa_model`,
`methods.eagle_model`), the last `--eval-samples` sequences held out. The output folder is the reference's hub
layout (`save_heads` / `save_layer`, so `--draft-heads DIR` loads it) plus `checkpoint.json` (the recipe, the
target artifact, the step), `optimizer.pt`, `history.csv`, `loss.png` and `distill.jsonl`. The same command
resumes it; another recipe or target is refused.

`--dtype bfloat16` runs the frozen target (answers, features, its embedding and LM head in the loss) in bf16 and
trains in mixed precision, as EAGLE's eagle/train/main.py does (`Accelerator(mixed_precision='bf16')`): the
drafter's weights and optimizer stay fp32 and the loss's forward runs under bf16 autocast. The default, float32,
runs everything in fp32.

Recipes (the references' optimizer settings; the warm-up is linear over the first 10% of the first run's
--steps, then the rate stays constant so a run can be extended):
- medusa (FasterDecoding/Medusa README command, HF Trainer defaults): lr 1e-3, betas (0.9, 0.999), weight decay 0,
  gradient norm clipped to 1.0, batch 8 per device (cosine decay and warm-up ratio 0.1 there).
- eagle (SafeAILab/EAGLE eagle/train/main.py): lr 3e-5, betas (0.9, 0.95), weight decay 0.01 (torch's AdamW
  default, which it keeps), gradients clipped by value at 0.5, batch 4 (2000 warm-up steps of a linear decay over
  800k there). Its input-feature noise is part of `eagle_loss`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench import drafter_data as data
from bench.checkpoint import HISTORY_FILE, check_counts, read_history, write_history
from bench.drafter_checkpoint import (
    OPTIMIZER_FILE,
    PLOT_FILE,
    eval_row,
    plot_history,
    resume_record,
    write_record,
)
from bench.features import FeatureCache, artifact_key
from core import models
from core.errors import BenchError
from core.files import atomic_write, file_sha256, portable
from core.models import LoadedModel
from methods.llm2slm import check_artifact
from tasks.base import resolve_data_dir

WARMUP_FRACTION = 0.1  # Medusa's warmup_ratio


@dataclass(frozen=True)
class Kind:
    """A trainable drafter: the methods module with `new_<noun>`, `<kind>_loss`, `save_<noun>`, `load_<noun>`,
    and the reference's optimizer recipe."""

    module: str
    noun: str
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    clip: tuple[str, float]  # ("norm", max norm) or ("value", max absolute gradient)
    batch_size: int
    options: dict[str, str] = field(default_factory=dict)  # recipe option (--heads) -> `new_<noun>` argument

    def functions(self, kind: str) -> tuple[Callable, Callable, Callable, Callable]:
        """new, loss, save and load of this kind."""
        lib = importlib.import_module(self.module)
        names = (f"new_{self.noun}", f"{kind}_loss", f"save_{self.noun}", f"load_{self.noun}")
        return tuple(getattr(lib, name) for name in names)  # type: ignore[return-value]


KINDS = {
    "medusa": Kind(
        "methods.medusa_model",
        "heads",
        1e-3,
        (0.9, 0.999),
        0.0,
        ("norm", 1.0),
        8,
        {"heads": "medusa_num_heads", "layers": "medusa_num_layers"},
    ),  # fmt: skip
    "eagle": Kind("methods.eagle_model", "layer", 3e-5, (0.9, 0.95), 0.01, ("value", 0.5), 4),
}


@dataclass
class DrafterConfig:
    """A training run. All fields but `steps`, `eval_every`, `save_every`, `threads`, `data_dir` and `out` must
    match to resume. `recipe`: the module's own options (medusa: heads, layers), passed to `new_<noun>`."""

    kind: str
    model: str
    out: str
    data: str | None = None  # a jsonl of prompts; None: the default mix
    dtype: str = "float32"  # the target's; bfloat16/float16: mixed-precision training (fp32 drafter weights)
    data_dir: str | None = None
    prompts: int | None = None  # None: data.DEFAULT_PROMPTS of the mix, every prompt of a --data file
    answer_tokens: int = 128
    steps: int = 200
    batch_size: int | None = None  # None: the kind's
    lr: float | None = None  # None: the kind's
    eval_samples: int = 16
    eval_every: int = 50  # 0: only before the first step and after the last
    save_every: int = 50
    seed: int = 0
    threads: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    answers_from: str | None = None  # another run's folder whose distill.jsonl answers the same prompts

    def validate(self) -> None:
        """Refuse values that cannot train, each with one line naming the flag; fill the kind's defaults."""
        if self.kind not in KINDS:
            raise BenchError(f"unknown drafter kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        kind = KINDS[self.kind]
        self.batch_size = self.batch_size or kind.batch_size
        self.lr = self.lr or kind.lr
        counts = {"prompts": self.prompts, "answer_tokens": self.answer_tokens, "steps": self.steps,
                  "batch_size": self.batch_size, "save_every": self.save_every, "threads": self.threads,
                  **self.recipe}  # fmt: skip
        check_counts(counts, self.eval_samples, self.eval_every, self.lr)
        models.resolve_dtype(self.dtype)
        if self.data is not None and not Path(self.data).is_file():
            raise BenchError(f"data file {self.data} does not exist")

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint (a --data file by its name and sha256)."""
        free = {"steps", "eval_every", "save_every", "threads", "data_dir", "out", "data", "answers_from"}
        fields = {k: v for k, v in asdict(self).items() if k not in free}
        fields["data"] = {"file": portable(self.data), "sha256": file_sha256(Path(self.data))} if self.data else None
        if self.dtype == "float32":
            del fields["dtype"]  # runs from before --dtype trained in fp32 and resume
        return fields


@dataclass
class Run:
    """A training run: the module, its optimizer, the cached sequences, and how far it has got."""

    config: DrafterConfig
    out: Path
    target: LoadedModel
    module: torch.nn.Module
    loss: Callable
    save: Callable
    optimizer: torch.optim.Optimizer
    sequences: list[data.Sequence]
    cache: FeatureCache
    n_train: int  # sequences [0, n_train) train, the rest are held out
    record: dict[str, Any]
    history: list[dict[str, Any]]
    started: float  # perf_counter() of training wall time 0, over resumes

    @property
    def step(self) -> int:
        return self.record["step"]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """hidden (B, T, H), tokens (B, T) and mask (B, T) of sequences, right padded; mask[b, t]: the token after
        t is an answer token."""
        seqs, feats = [self.sequences[i] for i in indices], self.cache.get(indices)
        width, param = max(len(s.ids) for s in seqs), next(self.module.parameters())
        hidden = torch.zeros(len(seqs), width, feats[0].shape[-1], dtype=param.dtype)
        tokens = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for b, (s, f) in enumerate(zip(seqs, feats, strict=True)):
            hidden[b, : len(s.ids)] = f.to(param.dtype)
            tokens[b, : len(s.ids)] = torch.tensor(s.ids)
            mask[b, len(s.prompt) - 1 : len(s.ids) - 1] = True
        return hidden.to(param.device), tokens.to(param.device), mask.to(param.device)

    def autocast(self) -> torch.autocast:
        """The loss's precision: the target's dtype under autocast (mixed precision), or plain fp32."""
        dtype = models.resolve_dtype(self.config.dtype)
        return torch.autocast(self.target.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def train_step(self) -> float:
        """One optimizer step at the warmed-up learning rate; returns its loss."""
        config, kind = self.config, KINDS[self.config.kind]
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (self.step + 1) / self.record["warmup_steps"])
        with self.autocast():
            loss, _ = self.loss(self.module, self.target, *self.batch(self.draw()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        how, limit = kind.clip
        clip = torch.nn.utils.clip_grad_norm_ if how == "norm" else torch.nn.utils.clip_grad_value_
        clip(params, limit)
        self.optimizer.step()
        self.record["step"] += 1
        return loss.item()

    def draw(self) -> list[int]:
        """The step's training sequences: consecutive slices of seeded per-epoch permutations (resumable)."""
        indices: list[int] = []
        batch, n = self.config.batch_size, self.n_train
        while len(indices) < batch:
            epoch, offset = divmod(self.step * batch + len(indices), n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch))
            indices += order[offset : offset + batch - len(indices)].tolist()
        return indices

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The held-out loss and metrics, averaged over answer positions."""
        self.module.eval()
        totals: dict[str, float] = {}
        count = 0.0
        held_out = list(range(self.n_train, len(self.sequences)))
        for start in range(0, len(held_out), self.config.batch_size):
            hidden, tokens, mask = self.batch(held_out[start : start + self.config.batch_size])
            with self.autocast():
                loss, metrics = self.loss(self.module, self.target, hidden, tokens, mask)
            weight = float(mask.sum())
            for name, value in {"loss": float(loss), **metrics}.items():
                totals[name] = totals.get(name, 0.0) + weight * float(value)
            count += weight
        self.module.train()
        return {name: total / max(count, 1.0) for name, total in totals.items()}

    def advance(self) -> dict[str, Any]:
        """Train one step, then evaluate if due (every --eval-every steps, and after the last); its history row."""
        config = self.config
        row: dict[str, Any] = {"step": None, "train_loss": self.train_step(), "eval_loss": None}
        row["step"] = self.step
        if self.n_train < len(self.sequences) and (
            self.step == config.steps or (config.eval_every and self.step % config.eval_every == 0)
        ):
            row.update(eval_row(self.evaluate()))
        row["elapsed_s"] = time.perf_counter() - self.started
        self.history.append(row)
        return row

    def checkpoint(self) -> None:
        """The hub layout (loadable by --draft-heads), the optimizer, history and plot, and the record last."""
        self.record["wall_s"]["train"] = time.perf_counter() - self.started
        meta = {k: self.record[k] for k in ("target", "target_key", "recipe", "step", "prompts", "wall_s")}
        self.save(self.module, self.out, meta)
        state = {"optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}
        atomic_write(self.out / OPTIMIZER_FILE, lambda path: torch.save(state, path))
        atomic_write(self.out / HISTORY_FILE, lambda path: write_history(path, self.history))
        plot_history(self.history, self.out / PLOT_FILE, self.config.kind)
        write_record(self.out, self.record)


@dataclass
class TrainResult:
    """What `train` returns: the output folder, the step reached, the history and the trained module."""

    out: Path
    step: int
    history: list[dict[str, Any]]
    module: torch.nn.Module


def train(config: DrafterConfig, progress: bool = True) -> TrainResult:
    """Generate, cache features and train (or resume) up to `config.steps`; see the module docstring."""
    config.validate()
    out = Path(config.out)
    record = resume_record(out, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    target = models.load(config.model, dtype=config.dtype)
    if record is not None:
        check_artifact(record["target"], target.artifact, "target")
        if record["target_key"] != artifact_key(target.artifact):
            raise BenchError(f"{out} was trained for other weights of the target {config.model}; use another --out")
    new, loss, save, load = KINDS[config.kind].functions(config.kind)
    prompts, skipped = data.load_prompts(target.tokenizer, config.data, resolve_data_dir(config.data_dir),
                                         config.prompts, config.seed, config.eval_samples)  # fmt: skip
    if record is None:
        warmup = max(1, round(WARMUP_FRACTION * config.steps))
        record = {"kind": config.kind, "recipe": config.identity(), "target": target.artifact, "step": 0,
                  "target_key": artifact_key(target.artifact), "warmup_steps": warmup,
                  "wall_s": {"distill": 0.0, "features": 0.0, "train": 0.0}}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        write_record(out, record)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, disable=not progress) as bar:
        clock = time.perf_counter()
        job = bar.add_task("generate answers", total=len(prompts), note="")
        sequences = data.distill(target, prompts, out, config.answer_tokens, data.TARGET_BATCH,
                                 lambda n: bar.advance(job, n), config.answers_from)  # fmt: skip
        record["wall_s"]["distill"] += time.perf_counter() - clock
        clock, cache = time.perf_counter(), data.feature_cache(target, sequences, data.TARGET_BATCH)
        job = bar.add_task("target features", total=len(sequences), note="")
        for start in range(0, len(sequences), 64):
            cache.get(list(range(start, min(start + 64, len(sequences)))))
            bar.update(job, completed=min(start + 64, len(sequences)), note=f"{cache.encoded} computed")
        record["wall_s"]["features"] += time.perf_counter() - clock
        n_train = len(sequences) - config.eval_samples
        record["prompts"] = {"train": n_train, "held_out": config.eval_samples, "skipped_long": skipped}
        torch.manual_seed(config.seed)
        kind = KINDS[config.kind]
        module = new(target, **{kind.options[k]: v for k, v in config.recipe.items()}).float()  # fp32 master weights
        module.train()
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=kind.betas, weight_decay=kind.weight_decay)
        history: list[dict[str, Any]] = []
        if record["step"]:  # resume: the saved weights, optimizer and RNG state, and the history so far
            module.load_state_dict(load(str(out), target, dtype=torch.float32).state_dict())  # no rounding
            saved = torch.load(out / OPTIMIZER_FILE, weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
            history = read_history(out / HISTORY_FILE)
        started = time.perf_counter() - record["wall_s"]["train"]
        run = Run(config, out, target, module, loss, save, optimizer, sequences, cache, n_train, record, history,
                  started)  # fmt: skip
        run_steps(run, bar)
    module.eval()
    return TrainResult(out, run.step, run.history, module)


def run_steps(run: Run, bar: Progress) -> None:
    """Evaluate before the first step of a new run, then train up to --steps, evaluating and saving when due."""
    config = run.config
    if run.step == 0 and run.n_train < len(run.sequences):
        run.history.append({"step": 0, "train_loss": None, **eval_row(run.evaluate()), "elapsed_s": 0.0})
    last = next((r["eval_loss"] for r in reversed(run.history) if r["eval_loss"] is not None), None)
    job = bar.add_task(f"train {config.kind}", total=config.steps, completed=run.step, note=_note(None, last))
    while run.step < config.steps:
        row = run.advance()
        if row["eval_loss"] is not None:
            last = row["eval_loss"]
            bar.console.print(f"step {run.step}: train loss {row['train_loss']:.4f}, eval loss {last:.4f}")
        bar.update(job, advance=1, note=_note(row["train_loss"], last))
        if run.step % config.save_every == 0 or run.step == config.steps:
            run.checkpoint()
    if run.step == config.steps and not (run.out / OPTIMIZER_FILE).is_file():
        run.checkpoint()  # --steps reached before (an earlier run): still a complete folder


def _note(train: float | None, held_out: float | None) -> str:
    return " ".join(f"{name} {'-' if v is None else f'{v:.4f}'}" for name, v in (("loss", train), ("eval", held_out)))
