"""`bench run`: load the model and task, decode every sample with the method (and the AR baseline in the same
process, interleaved per sample), and store each finished generation at once."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import environment, models
from bench.errors import BenchError
from bench.metrics import exactness, generation_record, summarize
from bench.store import SUMMARY, RunStore
from bench.timing import Timer
from methods.base import Method, get_method
from methods.decode import Sampler, StopRule
from tasks.base import Task, get_task

BASELINE = "ar"


@dataclass
class RunConfig:
    """Everything that defines a run. All fields but `limit`, `out`, `warmup` and `data_dir` must match to
    resume a run directory."""

    method: str
    task: str
    model: str = models.DEFAULT_MODEL
    draft: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None  # e.g. "auto": accelerate places the target across this node's GPUs
    max_new_tokens: int = 128
    seed: int = 0
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0
    baseline: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    turns: int | None = None  # at most this many turns of multi-turn tasks (None: all)
    split: str | None = None  # task-specific: e.g. wmt newstest2016
    subset: str | None = None  # task-specific: e.g. a Spec-Bench category
    limit: int | None = None
    warmup: int = 1
    data_dir: str | None = None
    out: str | None = None

    def validate(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be at least 1 (got {self.limit})")
        if self.max_new_tokens < 1:
            raise BenchError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise BenchError(f"--temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise BenchError(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.turns is not None and self.turns < 1:
            raise BenchError(f"--turns must be at least 1 (got {self.turns})")
        if self.top_k < 0 or self.warmup < 0:
            raise BenchError("--top-k and --warmup must be >= 0")
        models.resolve_dtype(self.dtype)

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("limit", "out", "warmup", "data_dir"):
            d.pop(k)
        return d

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        model = Path(self.model).name if Path(self.model).exists() else self.model.replace("/", "_")
        return Path("runs") / self.task / f"{self.method}-{model}-{self.dtype}-{digest}"

    def sampler(self) -> Sampler | None:
        if self.temperature == 0:
            return None
        return Sampler(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


@dataclass
class RunResult:
    out: Path
    summaries: list[dict[str, Any]]


def build_task(config: RunConfig) -> Task:
    """The task with the --split / --subset the user gave (refused by tasks that have none)."""
    cls = get_task(config.task)
    options = {k: v for k, v in (("split", config.split), ("subset", config.subset)) if v is not None}
    params = inspect.signature(cls.__init__).parameters
    for name in options:
        if name not in params:
            raise BenchError(f"task {config.task} has no --{name}")
    return cls(config.data_dir, **options)


def build_method(config: RunConfig, target: models.LoadedModel) -> Method:
    cls = get_method(config.method)
    options = dict(config.options)
    if config.draft:
        options["draft"] = models.load(config.draft, config.dtype, config.device)
    return cls(target, config.sampler(), **options)


def turn_id(sample_id: str, turn: int) -> str:
    """Record id of a turn: the sample id for the first turn, `ID:tN` for later ones."""
    return sample_id if turn == 0 else f"{sample_id}:t{turn + 1}"


def baseline_config(config: RunConfig) -> RunConfig:
    """The `ar` run that serves as the baseline of `config` (same model, dtype, task, samples and stop rule)."""
    return dataclasses.replace(config, method=BASELINE, draft=None, options={}, baseline=False, out=None)


def run(config: RunConfig, progress: bool = True, baseline_dir: Path | None = None) -> RunResult:
    """Run (or resume) one method on one task; returns the run directory and the summaries.

    The AR baseline runs interleaved with the method, sample by sample. Its records go to this run's store
    (role "baseline"), or, with `baseline_dir`, to that shared `ar` run (a sweep's one baseline per model,
    dtype and task), where samples already measured are reused instead of decoded again.
    """
    config.validate()
    task = build_task(config)
    method_cls = get_method(config.method)
    preset = models.PRESETS.get(config.model)
    if (
        config.draft is None
        and preset
        and preset.draft
        and "draft" in inspect.signature(method_cls.__init__).parameters
    ):
        config.draft = preset.draft  # the preset's usual draft model
    method_cls.check_options(set(config.options) | ({"draft"} if config.draft else set()))
    samples = task.load(config.limit)
    if not samples:
        raise BenchError(f"task {config.task} has no samples")
    target = models.load(config.model, config.dtype, config.device, config.device_map)
    method = build_method(config, target)
    baseline = None
    if config.baseline and config.method != BASELINE:
        baseline = get_method(BASELINE)(target, config.sampler())
    env = environment.describe(target.device)
    extra = {"model_artifact": target.artifact, "task_data": str(task.data_dir)}
    if config.device_map:
        placement = getattr(target.model, "hf_device_map", None) or {"": target.device}  # one device: no map
        extra["placement"] = {k: str(v) for k, v in placement.items()}
    if baseline and baseline_dir is not None:
        base_store = RunStore.open(baseline_dir, baseline_config(config).identity() | extra, env)
        extra["baseline_run"] = str(Path(os.path.relpath(baseline_dir, config.out_dir())))
    store = RunStore.open(config.out_dir(), config.identity() | extra, env)
    if not baseline or baseline_dir is None:
        base_store = store
    base_role = "method" if base_store is not store else "baseline"

    tokenizer = target.tokenizer  # prompts are always in the target's tokenization
    lanes = [(store, "method", method)]
    if baseline:
        lanes.insert(0, (base_store, base_role, baseline))
    turns = {s.id: task.turns(s)[: config.turns] for s in samples}
    pending = [
        s
        for s in samples
        if any(not st.has(role, turn_id(s.id, t)) for st, role, _ in lanes for t in range(len(turns[s.id])))
    ]

    def decode(m: Method, prompt_ids: list[int], max_new: int):
        stop = StopRule(max_new, m.output_eos_ids(), task.stop_strings, m.output_tokenizer)
        if m.sampler is not None:
            m.sampler.reset()
        return m.generate(prompt_ids, stop, Timer(target.device))

    if pending:
        first = task.prompt_ids(pending[0], tokenizer, [])
        for _ in range(config.warmup):
            for _, _, m in lanes:
                decode(m, first, min(16, config.max_new_tokens))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        job = bar.add_task(f"{config.method} on {config.task}", total=len(samples))
        bar.update(job, completed=len(samples) - len(pending))
        for sample in pending:
            for st, role, m in lanes:
                history: list[tuple[str, str]] = []
                for t, user_text in enumerate(turns[sample.id]):
                    pid = turn_id(sample.id, t)
                    record = st.get(role, pid)
                    if record is None:
                        ids = task.prompt_ids(sample, tokenizer, history)
                        decoded = decode(m, ids, config.max_new_tokens)
                        text = m.output_tokenizer.decode(decoded.tokens, skip_special_tokens=True)
                        record = generation_record(role, m.name, pid, decoded, text)
                        record |= {"sample_id": sample.id, "turn": t + 1, "prompt_tokens": len(ids)}
                        record["category"] = sample.meta.get("category")
                        reference = base_store.get(base_role, pid) if baseline else None
                        if st is store and reference and m.sampler is None and method_cls.lossless:
                            record.update(exactness(target.model, ids, reference["token_ids"], decoded.tokens))
                        st.append(record)
                    history.append((user_text, record["text"]))
            bar.advance(job)

    ids = {turn_id(s.id, t) for s in samples for t in range(len(turns[s.id]))}
    base_records = [r for r in base_store.records(base_role) if r["prompt_id"] in ids] if baseline else []
    method_records = [r for r in store.records("method") if r["prompt_id"] in ids]
    summaries = []
    if baseline:
        summaries.append(
            summarize(base_records, base_records) | {"role": "baseline"} | quality(task, samples, base_records)
        )
    summaries.append(
        summarize(method_records, base_records or None) | {"role": "method"} | quality(task, samples, method_records)
    )
    add_roofline(summaries, base_records or method_records, target)
    write_summary(store.root, summaries)
    if baseline and base_store is not store:  # the shared `ar` run gets its own summary, as if run alone
        write_summary(base_store.root, [summaries[0] | {"role": "method", "speedup": None}])
    return RunResult(store.root, summaries)


def quality(task: Task, samples: list, records: list[dict[str, Any]]) -> dict[str, float]:
    """The task's quality metrics over the finished first-turn records (samples in task order)."""
    by_id = {r["prompt_id"]: r for r in records}
    done = [(s, by_id[s.id]) for s in samples if s.id in by_id]
    return task.score([s for s, _ in done], [r["text"] for _, r in done]) if done else {}


def write_summary(root: Path, summaries: list[dict[str, Any]]) -> None:
    """`summary.json`: the run's summaries (quality and roofline included), rewritten after every (re)run."""
    tmp = root / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summaries, indent=1))
    os.replace(tmp, root / SUMMARY)


def add_roofline(summaries: list[dict[str, Any]], records: list[dict[str, Any]], target: models.LoadedModel) -> None:
    """Roofline tokens/s (bandwidth / bytes read per token at the mean context length) and, for rows with
    one token per forward (autoregressive), the fraction of it reached."""
    if not records:
        return
    context = sum(r["prompt_tokens"] + r["new_tokens"] / 2 for r in records) / len(records)
    per_token = environment.model_bytes(target.model) + environment.kv_bytes_per_token(target.model) * context
    roofline = environment.memory_bandwidth(str(target.device)) / per_token
    for s in summaries:
        if s.get("samples"):
            s["roofline_tokens_per_s"] = roofline
            one_per_forward = s["tau"] == 1.0 and get_method(s["method"]).lossless  # llm2slm: the SLM generates
            s["roofline_fraction"] = s["tokens_per_s"] / roofline if one_per_forward else None
