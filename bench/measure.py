"""Measuring a planned run: the lanes (the method under test and its AR baseline, each with its run store), the
warm-up, and the timed generations, interleaved per sample (one prompt at a time, or `--batch-size` prompts at once),
every finished generation stored at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.lanes import RunModels
from bench.records import batch_fields, exactness, generation_record, text_exactness
from bench.store import RunStore
from core.models import LoadedModel
from core.timing import Timer
from methods.base import Decoded, Method
from methods.decode import StopRule
from tasks.base import Sample, Task


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

    config: Any  # bench.runner.RunConfig, resolved
    task: Task
    samples: list[Sample]
    target: LoadedModel
    lanes: list[Lane]
    compiled: list[Any] = field(default_factory=list)  # `--compile`: methods.compiled.CompiledModel per model
    compile_s: dict[str, float] = field(default_factory=dict)  # per lane role: seconds compiling before timing
    models: RunModels | None = None  # the loaded models (full-precision target, quantized copies, draft)

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


def turn_id(sample_id: str, turn: int, repeat: int = 1) -> str:
    """Record id of a turn: the sample id for the first turn, `ID:tN` for later ones; `:rK` for repeat K > 1."""
    base = sample_id if turn == 0 else f"{sample_id}:t{turn + 1}"
    return base if repeat == 1 else f"{base}:r{repeat}"


def _stop(p: Plan, method: Method, max_new: int) -> StopRule:
    return StopRule(max_new, method.output_eos_ids(), p.task.stop_strings, method.output_tokenizer)


def _decode(p: Plan, method: Method, prompt_ids: list[int], max_new: int) -> Decoded:
    if method.sampler is not None:
        method.sampler.reset()
    return method.generate(prompt_ids, _stop(p, method, max_new), Timer(p.target.device))


def _decode_batch(p: Plan, method: Method, prompts: list[list[int]], max_new: int) -> list[Decoded]:
    if method.sampler is not None:
        method.sampler.reset()
    return method.generate_batch(prompts, [_stop(p, method, max_new) for _ in prompts], Timer(p.target.device))


def measure(p: Plan, progress: bool = True) -> None:
    """Decode every unfinished sample with every lane (baseline first), storing each generation as it ends."""
    pending = [s for s in p.samples if any(not lane.store.has(lane.role, pid) for lane in p.lanes
                                           for pid in p.turn_ids(s))]  # fmt: skip
    if pending:
        first = p.task.prompt_ids(pending[0], p.target.tokenizer, [])
        if p.compiled:  # every graph the timed part runs, compiled now; a later compile is an error
            p.compile_s = {lane.role: lane.method.warm_up_compiled(first) for lane in p.lanes}
            for compiled in p.compiled:
                compiled.seal()
        batch = [p.task.prompt_ids(s, p.target.tokenizer, []) for s in pending[: p.config.batch_size]]
        for lane in p.lanes:  # warm up; then the method forgets what the warm-up taught it (e.g. suffix's tree)
            for _ in range(p.config.warmup):
                if p.config.batch_size > 1:
                    _decode_batch(p, lane.method, batch, min(16, p.config.max_new_tokens))
                else:
                    _decode(p, lane.method, first, min(16, p.config.max_new_tokens))
            lane.method.end_warm_up()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress) as bar:
        job = bar.add_task(f"{p.config.method} on {p.config.task}", total=len(p.samples))
        bar.update(job, completed=len(p.samples) - len(pending))
        size = p.config.batch_size
        for group in (pending[i : i + size] for i in range(0, len(pending), size)):
            for repeat in range(1, p.config.repeats + 1):  # each repeat: the baseline, then the method
                for lane in p.lanes:
                    if size > 1:
                        _measure_batch(p, lane, group, repeat)
                    else:
                        _measure_turns(p, lane, group[0], repeat)
            bar.advance(job, len(group))


def _measure_turns(p: Plan, lane: Lane, sample: Sample, repeat: int = 1) -> None:
    """Every turn of `sample` with one lane; later turns see the lane's own earlier answers."""
    history: list[tuple[str, str]] = []
    for t, user_text in enumerate(p.turns(sample)):
        pid = turn_id(sample.id, t, repeat)
        record = lane.store.get(lane.role, pid)
        if record is None:
            ids = p.task.prompt_ids(sample, p.target.tokenizer, history)
            record = _record(p, lane, sample, t, repeat, ids, _decode(p, lane.method, ids, p.config.max_new_tokens))
            lane.store.append(record)
        history.append((user_text, record["text"]))


def _measure_batch(p: Plan, lane: Lane, group: list[Sample], repeat: int) -> None:
    """The first turns of `group` decoded together by one lane (those it has not stored yet); each record carries
    its share of the batch's time (`total_s`) and its own latency (`latency_s`, `ttft_s`, `tpot_s`)."""
    todo = [s for s in group if not lane.store.has(lane.role, turn_id(s.id, 0, repeat))]
    if not todo:
        return
    prompts = [p.task.prompt_ids(s, p.target.tokenizer, []) for s in todo]
    decoded = _decode_batch(p, lane.method, prompts, p.config.max_new_tokens)
    records = [_record(p, lane, s, 0, repeat, ids, d) for s, ids, d in zip(todo, prompts, decoded, strict=True)]
    for record, d in zip(records, decoded, strict=True):
        lane.store.append(record | batch_fields(d, len(todo)))


def _record(p: Plan, lane: Lane, sample: Sample, turn: int, repeat: int, ids: list[int], decoded: Decoded
            ) -> dict[str, Any]:  # fmt: skip
    """The record of one finished generation, with its exactness against the baseline's (greedy): token for token
    for our methods (a quantized target included), as text for another engine's tokens (`compares_text`)."""
    pid = turn_id(sample.id, turn, repeat)
    text = lane.method.output_tokenizer.decode(decoded.tokens, skip_special_tokens=True)
    record = generation_record(lane.role, lane.method.name, pid, decoded, text)
    record |= {"sample_id": sample.id, "turn": turn + 1, "repeat": repeat, "prompt_tokens": len(ids),
               "prompt_ids": ids, "category": sample.meta.get("category")}  # fmt: skip
    baseline = p.lanes[0] if p.lanes[0].role == "baseline" else None
    reference = baseline.store.get("baseline", pid) if baseline and lane is not baseline else None
    if reference and lane.method.sampler is None:
        if lane.method.compares_text:
            record.update(text_exactness(text, reference["text"]))
        elif lane.method.lossless:  # with --quant: against the full-precision AR output and model
            record.update(exactness(p.target.model, ids, reference["token_ids"], decoded.tokens))
    return record
