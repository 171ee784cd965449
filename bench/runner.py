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

from bench import environment
from bench import lanes as lanes_lib
from bench.measure import Lane, Plan, measure
from bench.records import aggregate
from bench.store import DirLock, RunStore
from core import models, quant
from core.errors import BenchError
from core.presets import DEFAULT_MODEL, PRESETS
from methods.base import METHODS
from methods.decode import Sampler
from tasks import chat
from tasks.base import TASKS, Sample, Task

BASELINE = "ar"
# Settings added after runs were stored: left out of a run's identity at their defaults, so older runs resume.
DEFAULTS_OF_OLDER_RUNS = (("compile", False), ("kernels", "aten"), ("quant", "none"), ("draft_quant", "none"),
                          ("batch_size", 1))  # fmt: skip


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
    quant: str = "none"  # the method lane's target, quantized (core.quant); the baseline stays full precision
    draft_quant: str = "none"  # the draft, quantized (`--draft self --draft-quant int4-wo`: a quantized self-draft)
    batch_size: int = 1  # prompts decoded at once, by both lanes (batchable methods: ar, hf)
    perplexity: int = 0  # score each lane's target on the first N newstest2014 English references (0: no)
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
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.perplexity >= 0, f"--perplexity must be >= 0 (got {self.perplexity})"),
            (self.quant in quant.SCHEMES, f"unknown --quant {self.quant!r}; choose one of {', '.join(quant.SCHEMES)}"),
            (
                self.draft_quant in quant.SCHEMES,
                f"unknown --draft-quant {self.draft_quant!r}; choose one of {', '.join(quant.SCHEMES)}",
            ),
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
        if self.quant != "none" and not method_cls.quantizable:
            raise BenchError(f"method {self.method} does not run on a --quant target")
        if self.batch_size > 1 and not method_cls.batchable:
            raise BenchError(f"method {self.method} decodes one prompt at a time: drop --batch-size")
        preset = PRESETS.get(model)
        draft = self.draft or (preset.draft if method_cls.uses_draft and preset else None)
        baseline = self.baseline or self.is_baseline  # an `ar` run is the baseline itself
        if self.batch_size > 1 and (self.turns or 1) > 1:
            raise BenchError("--batch-size decodes first turns only: use --turns 1")
        turns = 1 if self.batch_size > 1 else self.turns
        resolved = dataclasses.replace(self, model=model, draft=draft, baseline=baseline, options=options.as_dict(),
                                       task_options=task_options.as_dict(), turns=turns)  # fmt: skip
        lanes_lib.check(resolved)  # quantization schemes and their combinations, before any data or model loads
        return resolved

    @property
    def is_baseline(self) -> bool:
        """An `ar` run in full precision is the baseline itself (one lane); `ar --quant` is measured against it."""
        return self.method == BASELINE and self.quant == "none"

    def identity(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("limit", "repeats", "out", "warmup", "data_dir", "perplexity"):
            d.pop(k)
        d = {k: v for k, v in d.items() if (k, v) not in DEFAULTS_OF_OLDER_RUNS}
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
        return dataclasses.replace(self, method=BASELINE, draft=None, options={}, out=None, quant="none",
                                   draft_quant="none")  # fmt: skip


@dataclass
class RunResult:
    out: Path
    summaries: list[dict[str, Any]]


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
    shared = baseline_dir if not config.is_baseline and config.baseline else None
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
    loaded = lanes_lib.load(config)
    target = loaded.target
    method = method_cls.create(loaded.method_target, config.sampler(), config.options, loaded.draft)
    baseline = METHODS.get(BASELINE)(target, config.sampler()) if config.baseline or config.is_baseline else None
    compiled = {}
    if config.compile:  # before any run directory is touched: a model it cannot compile is refused here
        from methods.compiled import CompiledModel

        compiled = {id(m.target.model): CompiledModel(m.target.model) for m in (method, baseline) if m is not None}
    env = environment.describe(target.device)
    prompt_template = task.use_template(config.chat_template, target.tokenizer, config.system_prompt)
    extra = {"model_artifact": target.artifact, "task_data": task_data, "prompt_template": prompt_template}
    own = {"method_manifest": manifest} if (manifest := method.manifest()) else {}  # e.g. REST's datastore
    own |= {"quantization": loaded.quant} if loaded.quant else {}  # schemes, group sizes, library, kernels
    if config.device_map:
        placement = getattr(target.model, "hf_device_map", None) or {"": target.device}  # one device: no map
        extra["placement"] = {k: str(v) for k, v in placement.items()}
    with contextlib.ExitStack() as opened:  # closed again if a later one fails
        if config.is_baseline:  # the baseline alone (a sweep's shared `ar` run, or `bench run --method ar`)
            store = opened.enter_context(RunStore.open(config.out_dir(), config.identity() | extra, env))
            lanes = [Lane("baseline", baseline, store)]
        else:
            shared = None
            if baseline_dir is not None:
                shared_config = config.baseline_config().identity() | extra
                shared = opened.enter_context(RunStore.open(baseline_dir, shared_config, env))
                extra["baseline_run"] = str(Path(os.path.relpath(baseline_dir, config.out_dir())))
            store = opened.enter_context(RunStore.open(config.out_dir(), config.identity() | extra | own, env))
            lanes = [Lane("method", method, store)]
            if baseline is not None:
                lanes.insert(0, Lane("baseline", baseline, shared or store))
        opened.pop_all()
    for lane in lanes if compiled else []:
        lane.method.use_compiled(compiled[id(lane.method.target.model)])
    return Plan(config, task, samples, target, lanes, list(compiled.values()), models=loaded)


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


def finish(p: Plan) -> list[dict[str, Any]]:
    """One summary row per lane (records of this run's samples), with quality and roofline; written to
    summary.json (the shared baseline's run directory gets its own)."""
    ids = p.turn_ids()
    records = {lane.role: [r for r in lane.store.records(lane.role) if r["prompt_id"] in ids] for lane in p.lanes}
    baseline = records.get("baseline")
    peak = lanes_lib.peak_memory(p.target.device)  # after the timed generations, before anything else allocates
    summaries, scores = [], perplexities(p)
    for lane in p.lanes:
        paired = baseline if lane.role == "method" else None  # the baseline is not paired with itself
        row = {"role": lane.role, "method": lane.method.name} | aggregate(records[lane.role], paired)
        if p.config.compile:
            row["compile_s"] = p.compile_s.get(lane.role)  # None: nothing was compiled (a finished run resumed)
        row["quant"] = p.config.quant if lane.role == "method" else "none"
        row |= peak | ({"model_bytes": lanes_lib.model_bytes(p.models, lane.role)} if p.models is not None else {})
        row |= quality(p.task, p.samples, records[lane.role])
        if lane.method.compares_text:  # another engine ran its own file (llama.cpp): its bytes, no torch roofline
            row["model_bytes"] = lane.method.manifest().get("gguf_bytes")
        else:  # a torch model: its perplexity (--perplexity) and roofline
            row |= scores.get(id(lane.method.target.model), {})
            add_roofline([row], baseline or records.get("method", []), lane.method.target, p.config.batch_size)
        summaries.append(row)
    p.store.write_summary(summaries)
    if baseline is not None and p.lanes[0].store is not p.store:  # the shared `ar` run, as if run alone
        p.lanes[0].store.write_summary(summaries[:1])
    return summaries


def perplexities(p: Plan) -> dict[int, dict[str, Any]]:
    """`--perplexity N`: each lane target's perplexity on the first N newstest2014 English references (once per
    model: the baseline's full-precision target and a quantized copy differ), keyed by the model's id."""
    if not p.config.perplexity:
        return {}
    from core.perplexity import perplexity
    from tasks.fixed_text import perplexity_texts

    texts, identity = perplexity_texts(p.config.data_dir, p.config.perplexity)
    out = {}
    scored = [lane.method.target for lane in p.lanes if not lane.method.compares_text]  # llama.cpp: not a torch model
    for target in {id(t.model): t for t in scored}.values():
        score = perplexity(target.model, target.tokenizer, texts)
        text = f"{identity['split']}[:{identity['n']}] sha256 {identity['sha256']}"
        out[id(target.model)] = {"perplexity": score["perplexity"], "perplexity_tokens": score["tokens"],
                                 "perplexity_text": text}  # fmt: skip
    return out


def quality(task: Task, samples: list[Sample], records: list[dict[str, Any]]) -> dict[str, float]:
    """The task's quality metrics over the finished first-turn records (samples in task order)."""
    by_id = {r["prompt_id"]: r for r in records}
    done = [(s, by_id[s.id]) for s in samples if s.id in by_id]
    return task.score([s for s, _ in done], [r["text"] for _, r in done]) if done else {}


def add_roofline(summaries: list[dict[str, Any]], records: list[dict[str, Any]], target: models.LoadedModel,
                 batch: int = 1) -> None:  # fmt: skip
    """Roofline tokens/s (bandwidth / bytes read per token at the mean context length; a batch of B reads the
    weights once for B tokens) and, for rows with one token per forward of the target (autoregressive), the
    fraction of it reached."""
    if not records:
        return
    context = sum(r["prompt_tokens"] + r["new_tokens"] / 2 for r in records) / len(records)
    weights = environment.model_bytes(target.model) / batch
    per_token = weights + environment.kv_bytes_per_token(target.model) * context
    roofline = environment.memory_bandwidth(str(target.device)) / per_token
    for s in summaries:
        if s.get("samples"):
            s["roofline_tokens_per_s"] = roofline
            one_per_forward = s["tau"] == 1.0 and METHODS.get(s["method"]).lossless  # llm2slm: the SLM generates
            s["roofline_fraction"] = s["tokens_per_s"] / roofline if one_per_forward else None
