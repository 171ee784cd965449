"""`bench train`: fine-tune LLM-to-SLM (`llm2slm`) or, as its baseline, the same SLM alone (`slm`) on a task's
training split, with a held-out evaluation loss, periodic checkpoints and resume.

Examples are built like evaluation prompts (the task's `prompt_ids`: the LLM's tokenizer for llm2slm, the SLM's for
the baseline); the target is the reference text plus the SLM's EOS in the SLM's tokenizer, and the loss is on
answer tokens only. wmt trains on newstest2015-2019 (a range of years, or one year; runs evaluate newstest2014),
cnndm on its validation split (runs evaluate test); the last `--eval-samples` examples of the training split are
held out for the evaluation loss. `--cache-features` keeps the frozen LLM's features on disk (`bench.features`).
The checkpoint folder's files are written and read back by `bench.checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench import checkpoint
from bench.checkpoint import HISTORY_FILE, resume_record  # HISTORY_FILE: public here, for the CLI
from bench.features import FeatureCache, features_folder
from core import models
from core.errors import BenchError
from core.models import LoadedModel
from methods.llm2slm import BRIDGES, LLM2SLM, MODES, TUNINGS, check_artifact, check_choice, tune
from methods.llm2slm_io import answer_loss
from tasks import cnndm
from tasks.base import TASKS, Sample, Task
from tasks.sources import SOURCES, load_rows
from tasks.wmt import WMT, WMTOptions, year

__all__ = ["HISTORY_FILE", "TrainConfig", "TrainResult", "train"]

KINDS = ("llm2slm", "slm")
TRAIN_SPLITS = {"wmt": "newstest2015-2019", "cnndm": "validation"}
WARMUP_STEPS = 10  # linear learning-rate warm-up, then constant (so a run can be extended with more --steps)


@dataclass
class TrainConfig:
    """Everything that defines a training run. All fields but `steps`, `eval_every`, `save_every`, `threads`,
    `data_dir` and `out` must match to resume a checkpoint folder. New llm2slm runs of different tokenizers
    default to `bridge` `aligned`, the paper's design (`methods.llm2slm_align`; old checkpoints are `adapter`)."""

    kind: str
    slm: str
    task: str
    out: str
    llm: str | None = None
    train_split: str | None = None
    eval_samples: int = 32
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    slm_tuning: str = "full"
    mode: str = "add"
    bridge: str = "aligned"
    llm_layer: int = -1  # the LLM's last hidden state (after the final norm); K: the output of block K
    feature_norm: bool = False  # a LayerNorm on the LLM's features before the projector (a named improvement)
    cache_features: bool = False  # keep the LLM's features on disk (bench.features), shared by runs
    max_prompt_tokens: int = 1024  # longer prompts are skipped (not truncated: that would cut the template)
    max_answer_tokens: int = 128  # longer answers are truncated (losing their EOS)
    seed: int = 0
    data_dir: str | None = None
    eval_every: int = 50  # 0: evaluate only before the first and after the last step
    save_every: int = 50
    threads: int | None = None

    def validate(self) -> None:
        """Refuse values that cannot train, each with a message naming its flag."""
        check_choice("kind", self.kind, KINDS)
        names = ("steps", "batch_size", "max_prompt_tokens", "max_answer_tokens", "save_every", "threads")
        checkpoint.check_counts({n: getattr(self, n) for n in names}, self.eval_samples, self.eval_every, self.lr)
        check_choice("--slm-tuning", self.slm_tuning, TUNINGS)
        check_choice("--mode", self.mode, MODES)
        check_choice("--bridge", self.bridge, BRIDGES)
        if self.task not in TRAIN_SPLITS:
            raise BenchError(f"bench train supports --task {' or '.join(TRAIN_SPLITS)} (got {self.task!r})")
        if self.kind == "llm2slm" and not self.llm:
            raise BenchError("bench train llm2slm needs --llm")
        if self.kind == "slm" and self.slm_tuning == "frozen":
            raise BenchError("--slm-tuning frozen leaves nothing to train in the slm baseline")

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with its checkpoint."""
        free = {"steps", "eval_every", "save_every", "threads", "data_dir", "out", "cache_features"}
        free |= {"bridge", "llm_layer", "feature_norm"} if self.kind == "slm" else set()  # no LLM to bridge
        return {k: v for k, v in asdict(self).items() if k not in free}


@dataclass
class Example:
    """One training example: the prompt the model reads and the answer it learns."""

    prompt: list[int]  # the task's prompt in the prompt tokenizer (the LLM's for llm2slm, the SLM's alone)
    answer: list[int]  # the reference in the SLM's tokenizer, then its EOS


@dataclass
class TrainResult:
    """What `train` returns: the checkpoint folder, the step reached, the loss history and the model."""

    out: Path
    step: int
    history: list[dict[str, Any]]
    model: Any  # the trained LLM2SLM, or the SLM for the baseline, in eval mode


def training_samples(config: TrainConfig) -> tuple[Task, list[Sample]]:
    """The task (for its prompt format) and its training split's samples; never its evaluation split."""
    split = config.train_split
    if config.task == "wmt":
        years = wmt_years(split)
        tasks = [WMT(config.data_dir, WMTOptions(split=f"newstest{year}")) for year in years]
        return tasks[0], [sample for task in tasks for sample in task.load()]
    if split in cnndm.SUBSETS:
        raise BenchError(f"{split} is the cnndm evaluation split; train on validation or train")
    task = TASKS.get("cnndm")(config.data_dir)
    source = f"cnndm-{split}"
    if source not in SOURCES:
        raise BenchError(f"unknown cnndm training split {split!r}; train on validation or train")
    rows = load_rows(source, task.data_dir)
    samples = [
        Sample(str(r.get("id", i)), cnndm.TEMPLATE.format(article=r["article"]), reference=r["highlights"])
        for i, r in enumerate(rows)
    ]
    return task, samples


def wmt_years(split: str) -> list[int]:
    """The newstest years of a wmt training split: one ("newstest2016") or a range ("newstest2015-2019"); 2014,
    the evaluation year, is refused."""
    first, dash, last = split.removeprefix("newstest").partition("-")
    years = list(range(year(first), year(last if dash else first) + 1))
    if not years:
        raise BenchError(f"wmt training split {split!r} is an empty range of years")
    if 2014 in years:
        raise BenchError("newstest2014 is the wmt evaluation split; train on newstest2015-2019")
    return years


def build_examples(
    task: Task, samples: list[Sample], prompt_tokenizer: Any, answer_tokenizer: Any, eos: int, config: TrainConfig
) -> tuple[list[Example], int]:
    """Examples of the samples, and how many were skipped for a prompt over --max-prompt-tokens."""
    examples, skipped = [], 0
    for sample in samples:
        prompt = task.prompt_ids(sample, prompt_tokenizer, [])
        if len(prompt) > config.max_prompt_tokens:
            skipped += 1
            continue
        answer = answer_tokenizer(sample.reference, add_special_tokens=False)["input_ids"] + [eos]
        examples.append(Example(prompt, answer[: config.max_answer_tokens]))
    return examples, skipped


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """The examples of a step: consecutive slices of seeded per-epoch permutations (the same after a resume)."""
    indices: list[int] = []
    while len(indices) < batch:
        epoch, offset = divmod(step * batch + len(indices), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices += order[offset : offset + batch - len(indices)].tolist()
    return indices


def make_loss(model: Any, examples: list[Example], cache: FeatureCache | None) -> Callable:
    """indices -> (summed answer-token loss, answer tokens) for llm2slm (with a feature cache) or the SLM alone."""

    def loss(indices: list[int]) -> tuple[torch.Tensor, int]:
        batch = [examples[i] for i in indices]
        answers = [e.answer for e in batch]
        if cache is not None:
            return model.loss([e.prompt for e in batch], cache.get(indices), answers)
        embed = model.get_input_embeddings()
        device = embed.weight.device
        return answer_loss(model, [embed(torch.tensor(e.prompt, device=device)) for e in batch], answers)

    return loss


def load_models(config: TrainConfig, record: dict[str, Any] | None) -> tuple[LoadedModel | None, LoadedModel]:
    """The LLM (None for the baseline) and the SLM, checked against the checkpoint `record` being resumed."""
    slm = models.load(config.slm)
    llm = models.load(config.llm) if config.kind == "llm2slm" else None
    if record is not None:
        check_artifact(record["slm_artifact"], slm.artifact, "SLM")
        if llm is not None:
            check_artifact(record["llm_artifact"], llm.artifact, "LLM")
    if slm.tokenizer.eos_token_id is None:
        raise BenchError(f"the SLM {config.slm} has no EOS token to end its answers with")
    return llm, slm


@dataclass
class Run:
    """A training run: the model and its optimizer, the losses of its examples, and how far it has got."""

    config: TrainConfig
    out: Path
    model: Any  # the LLM2SLM, or the SLM for the baseline
    optimizer: torch.optim.Optimizer
    train_loss: Callable  # training example indices -> (summed answer-token loss, answer tokens)
    eval_loss: Callable  # the same for held-out example indices
    n_train: int
    n_eval: int
    record: dict[str, Any]  # the checkpoint record's fields that stay the same over the run
    export: Any  # the SLM's tokenizer for the baseline (its checkpoint is also a model folder), else None
    step: int
    history: list[dict[str, Any]]
    started: float  # the perf_counter() of wall time 0 (training: features, steps, evaluations, saves)

    def elapsed(self) -> float:
        """The run's wall time so far, over resumes."""
        return time.perf_counter() - self.started

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """The mean loss per answer token of the held-out examples."""
        self.model.eval()
        total, count, batch = 0.0, 0, self.config.batch_size
        for start in range(0, self.n_eval, batch):
            s, c = self.eval_loss(list(range(start, min(start + batch, self.n_eval))))
            total, count = total + float(s), count + c
        self.model.train()
        return total / count

    def train_step(self) -> float:
        """One optimizer step at the warm-up learning rate; returns its training loss."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (self.step + 1) / WARMUP_STEPS)
        total, count = self.train_loss(batch_indices(self.n_train, config.batch_size, self.step, config.seed))
        loss = total / count
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in self.optimizer.param_groups for p in group["params"]], 1.0)
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def advance(self) -> dict[str, Any]:
        """Train one step, then evaluate if due (every --eval-every steps, and after the last); its history row."""
        config = self.config
        train_loss = self.train_step()
        row = {"step": self.step, "train_loss": train_loss, "eval_loss": None}
        due = self.step == config.steps or (config.eval_every and self.step % config.eval_every == 0)
        if self.n_eval and due:
            row["eval_loss"] = self.held_out_loss()
        row["elapsed_s"] = self.elapsed()
        self.history.append(row)
        return row

    def save_if_due(self) -> None:
        """Write a checkpoint every --save-every steps and after the last."""
        if self.step % self.config.save_every == 0 or self.step == self.config.steps:
            record = self.record | {"step": self.step, "wall_s": self.elapsed()}
            checkpoint.save(self.out, self.model, self.optimizer, record, self.history, self.export)


def prepare(config: TrainConfig, out: Path, record: dict[str, Any] | None) -> Run:
    """Load the data and the models, build the model to train and its optimizer, and restore the state of the
    checkpoint `record` (None: a new run)."""
    task, samples = training_samples(config)
    if config.eval_samples >= len(samples):
        raise BenchError(f"--eval-samples {config.eval_samples} leaves no training data ({len(samples)} samples)")
    held_out, samples = samples[len(samples) - config.eval_samples :], samples[: len(samples) - config.eval_samples]
    llm, slm = load_models(config, record)
    torch.manual_seed(config.seed)
    tuning, layer, norm = config.slm_tuning, config.llm_layer, config.feature_norm
    model = LLM2SLM(llm, slm, config.mode, tuning, config.bridge, layer, norm) if llm else tune(slm.model, tuning)
    prompt_tokenizer, eos = llm.tokenizer if llm else slm.tokenizer, slm.tokenizer.eos_token_id
    train_ex, skipped = build_examples(task, samples, prompt_tokenizer, slm.tokenizer, eos, config)
    eval_ex, eval_skipped = build_examples(task, held_out, prompt_tokenizer, slm.tokenizer, eos, config)
    if not train_ex:
        raise BenchError(f"no training example has a prompt within --max-prompt-tokens {config.max_prompt_tokens}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    examples = {"train": len(train_ex), "held_out": len(eval_ex), "skipped_long": skipped + eval_skipped}
    fixed = checkpoint.new_record(config, llm.artifact if llm else None, slm.artifact, examples)
    folder = features_folder(llm.artifact, config.llm_layer) if llm and config.cache_features else None
    caches = [FeatureCache(model.encode, [e.prompt for e in ex], model.dtype, folder) if llm else None
              for ex in (train_ex, eval_ex)]  # fmt: skip
    losses = [make_loss(model, ex, cache) for ex, cache in zip((train_ex, eval_ex), caches, strict=True)]
    export = slm.tokenizer if config.kind == "slm" else None
    step, wall, history = checkpoint.restore(out, record, model, optimizer) if record else (0, 0.0, [])
    started = time.perf_counter() - wall
    return Run(
        config, out, model, optimizer, *losses, len(train_ex), len(eval_ex), fixed, export, step, history, started
    )


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train (or resume) to `config.steps`; returns the checkpoint folder, the loss history and the model."""
    config.validate()
    config.train_split = config.train_split or TRAIN_SPLITS[config.task]  # recorded explicitly, for resume
    out = Path(config.out)
    record = resume_record(out, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    run = prepare(config, out, record)
    run.model.train()
    if run.step == 0 and run.n_eval:  # a new run: the held-out loss before the first step
        first = run.held_out_loss()
        run.history.append({"step": 0, "train_loss": None, "eval_loss": first, "elapsed_s": run.elapsed()})
    run_steps(run, progress)
    run.model.eval()
    return TrainResult(out, run.step, run.history, run.model)


def run_steps(run: Run, progress: bool) -> None:
    """Train up to `config.steps`, evaluating and saving when due, behind a progress bar (when `progress`)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} eval {task.fields[eval]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    config = run.config
    last_eval = next((r["eval_loss"] for r in reversed(run.history) if r["eval_loss"] is not None), None)
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task(
            f"train {config.kind}", total=config.steps, completed=run.step, loss="-", eval=_fmt(last_eval)
        )
        while run.step < config.steps:
            row = run.advance()
            if row["eval_loss"] is not None:
                last_eval = row["eval_loss"]
                bar.console.print(f"step {run.step}: train loss {row['train_loss']:.4f}, eval loss {last_eval:.4f}")
            bar.update(job, advance=1, loss=_fmt(row["train_loss"]), eval=_fmt(last_eval))
            run.save_if_due()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
