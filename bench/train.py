"""`bench train`: fine-tune LLM-to-SLM (`llm2slm`) or, as its baseline, the same SLM alone (`slm`) on a task's
training split, with a held-out evaluation loss, periodic checkpoints and resume.

Examples are built like evaluation prompts (the task's `prompt_ids`: the LLM's tokenizer for llm2slm, the SLM's for
the baseline); the target is the reference text plus the SLM's EOS in the SLM's tokenizer, and the loss is on
answer tokens only. wmt trains on newstest2016 (runs evaluate newstest2014), cnndm on its validation split (runs
evaluate test); the last `--eval-samples` examples of the training split are held out for the evaluation loss.

A checkpoint folder holds `checkpoint.json` (config, step, wall time, the artifacts of the models it was trained
for), the trainable weights, the optimizer and RNG state, and `history.csv` (train and eval loss per step). The
baseline's folder is also a plain transformers model folder (LoRA merged), so `bench run --model DIR` loads it.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench import models
from bench.errors import BenchError
from methods.llm2slm import (
    LLM2SLM,
    LORA,
    MODES,
    STATE_FILE,
    TUNINGS,
    WEIGHTS_FILE,
    answer_loss,
    check_artifact,
    check_choice,
    load_trainable,
    read_record,
    trainable_state,
    tune,
)
from tasks.base import Sample, Task, get_task, read_jsonl
from tasks.cnndm import TEMPLATE as CNNDM_TEMPLATE
from tasks.wmt import WMT

KINDS = ("llm2slm", "slm")
TRAIN_SPLITS = {"wmt": "newstest2016", "cnndm": "validation"}
WARMUP_STEPS = 10  # linear learning-rate warm-up, then constant (so a run can be extended with more --steps)
OPTIMIZER_FILE = "optimizer.pt"
HISTORY_FILE = "history.csv"
HISTORY_FIELDS = ("step", "train_loss", "eval_loss", "elapsed_s")


@dataclass
class TrainConfig:
    """Everything that defines a training run. All fields but `steps`, `eval_every`, `save_every`, `threads`,
    `data_dir` and `out` must match to resume a checkpoint folder."""

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
    max_prompt_tokens: int = 1024  # longer prompts are skipped (not truncated: that would cut the template)
    max_answer_tokens: int = 128  # longer answers are truncated (losing their EOS)
    seed: int = 0
    data_dir: str | None = None
    eval_every: int = 50  # 0: evaluate only before the first and after the last step
    save_every: int = 50
    threads: int | None = None

    def validate(self) -> None:
        check_choice("kind", self.kind, KINDS)
        for name in ("steps", "batch_size", "max_prompt_tokens", "max_answer_tokens", "save_every", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1 (got {value})")
        if self.eval_samples < 0 or self.eval_every < 0:
            raise BenchError("--eval-samples and --eval-every must be >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise BenchError(f"--lr must be a positive number (got {self.lr})")
        check_choice("--slm-tuning", self.slm_tuning, TUNINGS)
        check_choice("--mode", self.mode, MODES)
        if self.task not in TRAIN_SPLITS:
            raise BenchError(f"bench train supports --task {' or '.join(TRAIN_SPLITS)} (got {self.task!r})")
        if self.kind == "llm2slm" and not self.llm:
            raise BenchError("bench train llm2slm needs --llm")
        if self.kind == "slm" and self.slm_tuning == "frozen":
            raise BenchError("--slm-tuning frozen leaves nothing to train in the slm baseline")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("steps", "eval_every", "save_every", "threads", "data_dir", "out"):
            d.pop(k)
        return d


@dataclass
class Example:
    prompt: list[int]  # the task's prompt in the prompt tokenizer (the LLM's for llm2slm, the SLM's alone)
    answer: list[int]  # the reference in the SLM's tokenizer, then its EOS


@dataclass
class TrainResult:
    out: Path
    step: int
    history: list[dict[str, Any]]
    model: Any  # the trained LLM2SLM, or the SLM for the baseline, in eval mode


def training_samples(config: TrainConfig) -> tuple[Task, list[Sample]]:
    """The task (for its prompt format) and its training split's samples; never its evaluation split."""
    split = config.train_split
    if config.task == "wmt":
        task = WMT(config.data_dir, split=split)
        if task.year == 2014:
            raise BenchError("newstest2014 is the wmt evaluation split; train on newstest2016")
        return task, task.load()
    if split == "test":
        raise BenchError("test is the cnndm evaluation split; train on validation or train")
    task = get_task("cnndm")(config.data_dir)
    rows = _cnndm_rows(task.data_dir, split)
    samples = [
        Sample(str(r.get("id", i)), CNNDM_TEMPLATE.format(article=r["article"]), reference=r["highlights"])
        for i, r in enumerate(rows)
    ]
    return task, samples


def _cnndm_rows(data_dir: Path | None, split: str) -> list[dict[str, Any]]:
    if data_dir is not None:
        return read_jsonl(data_dir / "cnn_dailymail" / f"{split}.jsonl", ("article", "highlights"))
    try:
        from datasets import load_dataset

        return list(load_dataset("cnn_dailymail", "3.0.0", split=split))
    except Exception as exc:
        raise BenchError(
            f"could not load cnn_dailymail 3.0.0 {split} from the hub ({type(exc).__name__}); "
            f"pass --data-dir with cnn_dailymail/{split}.jsonl"
        ) from exc


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


class FeatureCache:
    """The frozen LLM's features of each example's prompt, computed on first use and kept in memory.

    The LLM is never trained, so its representation of a prompt never changes: encoding each prompt once, instead
    of at every epoch and every evaluation, takes the LLM out of the training step, which is most of its CPU time.
    The price is memory: prompt tokens x the LLM's hidden size floats per example used.
    """

    def __init__(self, model: LLM2SLM, examples: list[Example]) -> None:
        self.model = model
        self.examples = examples
        self.features: dict[int, torch.Tensor] = {}

    def get(self, indices: list[int]) -> list[torch.Tensor]:
        missing = [i for i in dict.fromkeys(indices) if i not in self.features]
        if missing:
            encoded = self.model.encode([self.examples[i].prompt for i in missing])
            self.features.update(zip(missing, encoded, strict=True))
        return [self.features[i] for i in indices]


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


@torch.no_grad()
def evaluate(model: Any, loss: Callable, n: int, batch: int) -> float:
    """Mean loss per answer token over the held-out examples."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, n, batch):
        s, c = loss(list(range(start, min(start + batch, n))))
        total, count = total + float(s), count + c
    model.train()
    return total / count


def resume_record(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to continue in `out` (None for a new run); a different config is refused."""
    if not (out / STATE_FILE).exists():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BenchError(f"{out} exists and is not a bench train checkpoint; choose a new --out")
        return None
    record = read_record(out, kind=None)
    ours, theirs = config.identity(), record["config"]
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        raise BenchError(f"{out} holds a checkpoint with a different config ({', '.join(differ)}); use another --out")
    return record


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file and rename, so a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: int(r[k]) if k == "step" else float(r[k]) if r[k] else None for k in HISTORY_FIELDS} for r in rows]


def save(out: Path, model: Any, optimizer: torch.optim.Optimizer, record: dict, history: list, export: Any) -> None:
    """Write a checkpoint (the record last); `export`: the SLM's tokenizer, to also write a plain model folder."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    _replace(out / OPTIMIZER_FILE, lambda p: torch.save(state, p))
    _replace(out / HISTORY_FILE, lambda p: write_history(p, history))
    _replace(out / WEIGHTS_FILE, lambda p: save_file(trainable_state(model), p))
    if export is not None:
        plain = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
        plain.save_pretrained(out)
        export.save_pretrained(out)
    _replace(out / STATE_FILE, lambda p: p.write_text(json.dumps(record, indent=1)))


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train (or resume) to `config.steps`; returns the checkpoint folder, the loss history and the model."""
    config.validate()
    config.train_split = config.train_split or TRAIN_SPLITS[config.task]  # recorded explicitly, for resume
    out = Path(config.out)
    record = resume_record(out, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    task, samples = training_samples(config)
    if config.eval_samples >= len(samples):
        raise BenchError(f"--eval-samples {config.eval_samples} leaves no training data ({len(samples)} samples)")
    held_out, samples = samples[len(samples) - config.eval_samples :], samples[: len(samples) - config.eval_samples]

    slm = models.load(config.slm)
    llm = models.load(config.llm) if config.kind == "llm2slm" else None
    if record is not None:
        check_artifact(record["slm_artifact"], slm.artifact, "SLM")
        if llm is not None:
            check_artifact(record["llm_artifact"], llm.artifact, "LLM")
    eos = slm.tokenizer.eos_token_id
    if eos is None:
        raise BenchError(f"the SLM {config.slm} has no EOS token to end its answers with")
    torch.manual_seed(config.seed)
    model = LLM2SLM(llm, slm, config.mode, config.slm_tuning) if llm else tune(slm.model, config.slm_tuning)
    prompt_tokenizer = llm.tokenizer if llm else slm.tokenizer
    train_ex, skipped = build_examples(task, samples, prompt_tokenizer, slm.tokenizer, eos, config)
    eval_ex, eval_skipped = build_examples(task, held_out, prompt_tokenizer, slm.tokenizer, eos, config)
    if not train_ex:
        raise BenchError(f"no training example has a prompt within --max-prompt-tokens {config.max_prompt_tokens}")
    train_loss = make_loss(model, train_ex, FeatureCache(model, train_ex) if llm else None)
    eval_loss = make_loss(model, eval_ex, FeatureCache(model, eval_ex) if llm else None)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    step, wall, history = 0, 0.0, []
    if record is not None:
        from safetensors.torch import load_file

        load_trainable(model, load_file(out / WEIGHTS_FILE))
        saved = torch.load(out / OPTIMIZER_FILE, weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        step, wall, history = record["step"], record["wall_s"], read_history(out / HISTORY_FILE)
    t0 = time.perf_counter() - wall  # wall time of training (features, steps, evaluations, saves), over resumes
    base = {
        "format": 1,
        "kind": config.kind,
        "config": config.identity(),
        "llm_artifact": llm.artifact if llm else None,
        "slm_artifact": slm.artifact,
        "lora": LORA if config.slm_tuning == "lora" else None,
        "examples": {"train": len(train_ex), "held_out": len(eval_ex), "skipped_long": skipped + eval_skipped},
        "history": HISTORY_FILE,
    }
    export = slm.tokenizer if config.kind == "slm" else None

    model.train()
    if step == 0 and eval_ex:
        first = evaluate(model, eval_loss, len(eval_ex), config.batch_size)
        history.append({"step": 0, "train_loss": None, "eval_loss": first})
        history[-1]["elapsed_s"] = time.perf_counter() - t0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} eval {task.fields[eval]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    last_eval = next((r["eval_loss"] for r in reversed(history) if r["eval_loss"] is not None), None)
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task(f"train {config.kind}", total=config.steps, completed=step, loss="-", eval=_fmt(last_eval))
        while step < config.steps:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / WARMUP_STEPS)
            total, count = train_loss(batch_indices(len(train_ex), config.batch_size, step, config.seed))
            loss = total / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            step += 1
            row = {"step": step, "train_loss": loss.item(), "eval_loss": None}
            if eval_ex and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
                row["eval_loss"] = evaluate(model, eval_loss, len(eval_ex), config.batch_size)
                bar.console.print(f"step {step}: train loss {row['train_loss']:.4f}, eval loss {row['eval_loss']:.4f}")
            row["elapsed_s"] = time.perf_counter() - t0
            history.append(row)
            last_eval = last_eval if row["eval_loss"] is None else row["eval_loss"]
            bar.update(job, advance=1, loss=_fmt(row["train_loss"]), eval=_fmt(last_eval))
            if step % config.save_every == 0 or step == config.steps:
                record = base | {"step": step, "wall_s": time.perf_counter() - t0}
                save(out, model, optimizer, record, history, export)
    model.eval()
    return TrainResult(out, step, history, model)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
