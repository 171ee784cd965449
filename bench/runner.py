"""`bench run`: plan (resolve the config, load task and models, open the run stores), measure (the method and
the AR baseline on the same samples, interleaved per sample, every finished generation stored at once) and finish
(summaries with quality and roofline)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import environment
from bench.records import aggregate, exactness, generation_record
from bench.store import DirLock, RunStore
from core import models
from core.errors import BenchError
from core.presets import DEFAULT_MODEL, PRESETS
from core.timing import Timer
from methods.base import METHODS, Decoded, Method
from methods.decode import Sampler, StopRule
from tasks import chat
from tasks.base import TASKS, Sample, Task

BASELINE = "ar"


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. All fields but `limit`, `repeats`, `out`, `warmup` and `data_dir` must match to
    resume a run directory. `resolve()` fills every default in; the run's identity is that of the resolved one."""

    method: str
    task: str
    model: str | None = None  # None: the method's default (llm2slm: its checkpoint's LLM), else DEFAULT_MODEL
    draft: str | None = None  # None: the preset's usual draft model, for methods that use one
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None  # e.g. "auto": accelerate places the target across this node's GPUs
    max_new_tokens: int = 128
    seed: int = 0
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0
    baseline: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # the method's options, by name
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's options (split, subset ...)
    turns: int | None = None  # at most this many turns of multi-turn tasks (None: all)
    chat_template: str = "hf"  # hf (the tokenizer's own), none (plain text), a shipped name or a .jinja file
    system_prompt: str | None = None  # replaces the chat template's system message
    threads: int | None = None  # torch CPU threads (None: torch's default)
    compile: bool = False  # compiled forwards (methods.compiled) for both lanes, graphs compiled before timing
    kernels: str = "aten"  # the linear layers' kernels (core.kernels) of the target and draft, for both lanes
    limit: int | None = None
    warmup: int = 1
    repeats: int = 1  # generations of each prompt per lane (interleaved with the baseline's); records say which
    data_dir: str | None = None
    out: str | None = None

    def validate(self) -> None:
        """Check the numbers and names that need no registry lookup."""
        checks = [
            (self.limit is None or self.limit >= 1, f"--limit must be at least 1 (got {self.limit})"),
            (self.max_new_tokens >= 1, f"--max-new-tokens must be at least 1 (got {self.max_new_tokens})"),
            (self.temperature >= 0, f"--temperature must be >= 0 (got {self.temperature})"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1] (got {self.top_p})"),
            (self.turns is None or self.turns >= 1, f"--turns must be at least 1 (got {self.turns})"),
            (self.threads is None or self.threads >= 1, f"--threads must be at least 1 (got {self.threads})"),
            (self.repeats >= 1, f"--repeats must be at least 1 (got {self.repeats})"),
            (self.top_k >= 0 and self.warmup >= 0, "--top-k and --warmup must be >= 0"),
            (self.dtype in models.DTYPES, f"unknown dtype {self.dtype!r}; choose one of {', '.join(models.DTYPES)}"),
            (not (self.compile and self.device_map), "--compile does not support --device-map"),
            (not (self.compile and self.kernels != "aten"), "--compile generates its own kernels: drop --kernels"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchError(message)

    def resolve(self) -> RunConfig:
        """This config with every default filled in (model, draft, method and task options), validated."""
        self.validate()
        method_cls, task_cls = METHODS.get(self.method), TASKS.get(self.task)
        if self.compile and not method_cls.compilable:
            raise BenchError(f"method {self.method} does not support --compile (ar, hf and the engine's methods do)")
        options = method_cls.Options.resolve(self.options, self.method)
        task_options = task_cls.Options.resolve(self.task_options, self.task)
        task_cls.check_prompt_format(self.chat_template, self.system_prompt)
        model = self.model or method_cls.default_model(options) or DEFAULT_MODEL
        if self.draft and not method_cls.uses_draft:
            raise BenchError(f"method {self.method} does not take --draft")
        preset = PRESETS.get(model)
        draft = self.draft or (preset.draft if method_cls.uses_draft and preset else None)
        baseline = self.baseline or self.method == BASELINE  # an `ar` run is the baseline itself
        return dataclasses.replace(self, model=model, draft=draft, baseline=baseline, options=options.as_dict(),
                                   task_options=task_options.as_dict())  # fmt: skip

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("limit", "repeats", "out", "warmup", "data_dir"):
            d.pop(k)
        d = {k: v for k, v in d.items() if (k, v) not in (("compile", False), ("kernels", "aten"))}  # as older runs
        d["chat_template"] = chat.label(self.chat_template)  # a template file by its name; its sha256 is in extra
        return d

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        model = str(self.model)
        name = Path(model).name if Path(model).exists() else model.replace("/", "_")
        return Path("runs") / self.task / f"{self.method}-{name}-{self.dtype}-{digest}"

    def sampler(self) -> Sampler | None:
        if self.temperature == 0:
            return None
        return Sampler(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)

    def baseline_config(self) -> RunConfig:
        """The `ar` run that serves as this run's baseline (same model, dtype, task, samples and stop rule)."""
        return dataclasses.replace(self, method=BASELINE, draft=None, options={}, out=None)


@dataclass
class Lane:
    """One decoder of a run: the method under test or its AR baseline, and the store its records go to."""

    role: str  # "method" or "baseline": what the records are
    method: Method
    store: RunStore


@dataclass
class Plan:
    """A run ready to measure: resolved config, task and samples, the loaded target, the lanes (baseline first;
    an `ar` run has the baseline lane alone)."""

    config: RunConfig
    task: Task
    samples: list[Sample]
    target: models.LoadedModel
    lanes: list[Lane]
    compiled: Any = None  # `--compile`: the target's methods.compiled.CompiledModel, shared by the lanes
    compile_s: dict[str, float] = field(default_factory=dict)  # per lane role: seconds compiling before timing

    @property
    def store(self) -> RunStore:
        return self.lanes[-1].store

    def turns(self, sample: Sample) -> list[str]:
        return self.task.turns(sample)[: self.config.turns]

    def close(self) -> None:
        """Release the run directories' locks (each store once)."""
        for store in {id(lane.store): lane.store for lane in self.lanes}.values():
            store.close()

    def turn_ids(self, sample: Sample | None = None) -> set[str]:
        """Record ids of every turn and repeat of `sample` (of every sample when None)."""
        samples = self.samples if sample is None else [sample]
        repeats = range(1, self.config.repeats + 1)
        return {turn_id(s.id, t, r) for s in samples for t in range(len(self.turns(s))) for r in repeats}


@dataclass
class RunResult:
    out: Path
    summaries: list[dict[str, Any]]


def turn_id(sample_id: str, turn: int, repeat: int = 1) -> str:
    """Record id of a turn: the sample id for the first turn, `ID:tN` for later ones; `:rK` for repeat K > 1."""
    base = sample_id if turn == 0 else f"{sample_id}:t{turn + 1}"
    return base if repeat == 1 else f"{base}:r{repeat}"


def plan(config: RunConfig, baseline_dir: Path | None = None) -> Plan:
    """Resolve `config`, load its task and models and open its run directory (and, with `baseline_dir`, the
    shared `ar` run of a sweep that holds the baseline records). The directories are locked for this process
    before the models load (another process using one is refused at once) and stay locked until `Plan.close()`."""
    config = config.resolve()
    task_cls = TASKS.get(config.task)
    task = task_cls(config.data_dir, task_cls.Options.resolve(config.task_options, config.task))
    samples, task_data = task.load_traced(config.limit)
    if not samples:
        raise BenchError(f"task {config.task} has no samples")
    shared = baseline_dir if config.method != BASELINE and config.baseline else None
    with contextlib.ExitStack() as locked:  # until the stores hold the locks themselves
        for folder in [config.out_dir()] + ([shared] if shared is not None else []):
            locked.enter_context(DirLock.acquire(folder))
        return _open_plan(config, task, samples, task_data, shared)


def _open_plan(
    config: RunConfig, task: Task, samples: list[Sample], task_data: dict[str, Any], baseline_dir: Path | None
) -> Plan:
    method_cls = METHODS.get(config.method)
    if config.threads:
        torch.set_num_threads(config.threads)
    target = models.load(config.model, config.dtype, config.device, config.device_map, config.kernels)
    draft = models.load(config.draft, config.dtype, config.device, kernels=config.kernels) if config.draft else None
    method = method_cls.create(target, config.sampler(), config.options, draft)
    compiled = None
    if config.compile:  # before any run directory is touched: a model it cannot compile is refused here
        from methods.compiled import CompiledModel

        compiled = CompiledModel(target.model)
    env = environment.describe(target.device)
    prompt_template = task.use_template(config.chat_template, target.tokenizer, config.system_prompt)
    extra = {"model_artifact": target.artifact, "task_data": task_data, "prompt_template": prompt_template}
    own = {"method_manifest": manifest} if (manifest := method.manifest()) else {}  # e.g. REST's datastore
    if config.device_map:
        placement = getattr(target.model, "hf_device_map", None) or {"": target.device}  # one device: no map
        extra["placement"] = {k: str(v) for k, v in placement.items()}
    with contextlib.ExitStack() as opened:  # closed again if a later one fails
        if config.method == BASELINE:  # the baseline alone (a sweep's shared `ar` run, or `bench run --method ar`)
            store = opened.enter_context(RunStore.open(config.out_dir(), config.identity() | extra, env))
            lanes = [Lane("baseline", method, store)]
        else:
            shared = None
            if baseline_dir is not None:
                shared_config = config.baseline_config().identity() | extra
                shared = opened.enter_context(RunStore.open(baseline_dir, shared_config, env))
                extra["baseline_run"] = str(Path(os.path.relpath(baseline_dir, config.out_dir())))
            store = opened.enter_context(RunStore.open(config.out_dir(), config.identity() | extra | own, env))
            lanes = [Lane("method", method, store)]
            if config.baseline:
                lanes.insert(0, Lane("baseline", METHODS.get(BASELINE)(target, config.sampler()), shared or store))
        opened.pop_all()
    if compiled is not None:
        for lane in lanes:
            lane.method.use_compiled(compiled)
    return Plan(config, task, samples, target, lanes, compiled)


def run(config: RunConfig, progress: bool = True, baseline_dir: Path | None = None) -> RunResult:
    """Run (or resume) one method on one task; returns the run directory and the summaries.

    The AR baseline runs interleaved with the method, sample by sample. Its records go to this run's store, or,
    with `baseline_dir`, to that shared `ar` run, where samples already measured are reused instead of decoded."""
    p = plan(config, baseline_dir)
    try:
        measure(p, progress)
        return RunResult(p.store.root, finish(p))
    finally:
        p.close()


def _decode(p: Plan, method: Method, prompt_ids: list[int], max_new: int) -> Decoded:
    stop = StopRule(max_new, method.output_eos_ids(), p.task.stop_strings, method.output_tokenizer)
    if method.sampler is not None:
        method.sampler.reset()
    return method.generate(prompt_ids, stop, Timer(p.target.device))


def measure(p: Plan, progress: bool = True) -> None:
    """Decode every unfinished sample with every lane (baseline first), storing each generation as it ends."""
    pending = [s for s in p.samples if any(not lane.store.has(lane.role, pid) for lane in p.lanes
                                           for pid in p.turn_ids(s))]  # fmt: skip
    if pending:
        first = p.task.prompt_ids(pending[0], p.target.tokenizer, [])
        if p.compiled is not None:  # every graph the timed part runs, compiled now; a later compile is an error
            p.compile_s = {lane.role: lane.method.warm_up_compiled(first) for lane in p.lanes}
            p.compiled.seal()
        for lane in p.lanes:  # warm up; then the method forgets what the warm-up taught it (e.g. suffix's tree)
            for _ in range(p.config.warmup):
                _decode(p, lane.method, first, min(16, p.config.max_new_tokens))
            lane.method.end_warm_up()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task(f"{p.config.method} on {p.config.task}", total=len(p.samples))
        bar.update(job, completed=len(p.samples) - len(pending))
        for sample in pending:
            for repeat in range(1, p.config.repeats + 1):  # each repeat: the baseline, then the method
                for lane in p.lanes:
                    _measure_turns(p, lane, sample, repeat)
            bar.advance(job)


def _measure_turns(p: Plan, lane: Lane, sample: Sample, repeat: int = 1) -> None:
    """Every turn of `sample` with one lane; later turns see the lane's own earlier answers."""
    history: list[tuple[str, str]] = []
    baseline = p.lanes[0] if p.lanes[0].role == "baseline" else None
    for t, user_text in enumerate(p.turns(sample)):
        pid = turn_id(sample.id, t, repeat)
        record = lane.store.get(lane.role, pid)
        if record is None:
            ids = p.task.prompt_ids(sample, p.target.tokenizer, history)
            decoded = _decode(p, lane.method, ids, p.config.max_new_tokens)
            text = lane.method.output_tokenizer.decode(decoded.tokens, skip_special_tokens=True)
            record = generation_record(lane.role, lane.method.name, pid, decoded, text)
            record |= {"sample_id": sample.id, "turn": t + 1, "repeat": repeat, "prompt_tokens": len(ids),
                       "prompt_ids": ids, "category": sample.meta.get("category")}  # fmt: skip
            reference = baseline.store.get("baseline", pid) if baseline and lane is not baseline else None
            if reference and lane.method.sampler is None and lane.method.lossless:
                record.update(exactness(p.target.model, ids, reference["token_ids"], decoded.tokens))
            lane.store.append(record)
        history.append((user_text, record["text"]))


def finish(p: Plan) -> list[dict[str, Any]]:
    """One summary row per lane (records of this run's samples), with quality and roofline; written to
    summary.json (the shared baseline's run directory gets its own)."""
    ids = p.turn_ids()
    records = {lane.role: [r for r in lane.store.records(lane.role) if r["prompt_id"] in ids] for lane in p.lanes}
    baseline = records.get("baseline")
    summaries = []
    for lane in p.lanes:
        paired = baseline if lane.role == "method" else None  # the baseline is not paired with itself
        row = {"role": lane.role, "method": lane.method.name} | aggregate(records[lane.role], paired)
        if p.config.compile:
            row["compile_s"] = p.compile_s.get(lane.role)  # None: nothing was compiled (a finished run resumed)
        summaries.append(row | quality(p.task, p.samples, records[lane.role]))
    add_roofline(summaries, baseline or records.get("method", []), p.target)
    p.store.write_summary(summaries)
    if baseline is not None and p.lanes[0].store is not p.store:  # the shared `ar` run, as if run alone
        p.lanes[0].store.write_summary(summaries[:1])
    return summaries


def quality(task: Task, samples: list[Sample], records: list[dict[str, Any]]) -> dict[str, float]:
    """The task's quality metrics over the finished first-turn records (samples in task order)."""
    by_id = {r["prompt_id"]: r for r in records}
    done = [(s, by_id[s.id]) for s in samples if s.id in by_id]
    return task.score([s for s, _ in done], [r["text"] for _, r in done]) if done else {}


def add_roofline(summaries: list[dict[str, Any]], records: list[dict[str, Any]], target: models.LoadedModel) -> None:
    """Roofline tokens/s (bandwidth / bytes read per token at the mean context length) and, for rows with
    one token per forward of the target (autoregressive), the fraction of it reached."""
    if not records:
        return
    context = sum(r["prompt_tokens"] + r["new_tokens"] / 2 for r in records) / len(records)
    per_token = environment.model_bytes(target.model) + environment.kv_bytes_per_token(target.model) * context
    roofline = environment.memory_bandwidth(str(target.device)) / per_token
    for s in summaries:
        if s.get("samples"):
            s["roofline_tokens_per_s"] = roofline
            one_per_forward = s["tau"] == 1.0 and METHODS.get(s["method"]).lossless  # llm2slm: the SLM generates
            s["roofline_fraction"] = s["tokens_per_s"] / roofline if one_per_forward else None
