"""`bench report --against PAPER`: published numbers (package data `bench/data/published.csv`) joined with the
measured rows of `bench report`. One output row per claim: the comparable measurement (the paper's model, hardware,
dtype, temperature and full method setup), else the closest other one with what differs, else "not measured".
Join rules and each paper's metric definitions: docs/against.md."""

from __future__ import annotations

import json
import re
from contextlib import suppress
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import BenchError
from core.presets import PRESETS
from methods.base import METHODS
from tasks.base import TASKS

REFERENCE = resources.files("bench") / "data" / "published.csv"

# The report column each paper's metric is computed as (ours for a metric or paper not listed).
DEFINITIONS: dict[str, dict[str, str]] = {
    "spec-bench": {"speedup": "speedup_of_means"},  # evaluation/speed.py: mean tokens/s over the baseline's mean
    "lookahead": {"speedup": "speedup"},  # the reference's eval scripts print both; Fig. 5 does not say which
    "llm-to-slm": {"speedup": "speedup_time"},  # "up to 4x": a best case; time, as the SLM's tokens are its own
}
PCT_OF_BASELINE = "_pct_of_baseline"  # a quality metric as a percentage of the baseline's (`bleu_pct_of_baseline`)
COLUMNS = ["paper", "task", "category", "method", "metric", "claimed_model", "claimed_hardware", "claimed_settings",
           "measured_model", "measured_settings", "claimed", "measured", "measured_ours", "ratio", "matches",
           "status"]  # fmt: skip
# Words of a device name that say neither the chip nor its memory: vendors, brands, form factors, memory kinds.
NOISE = re.compile(r"nvidia|amd|tesla|geforce|quadro|radeon|sxm\d*|pcie|nvl|oam|hbm\d*e?")


@dataclass(frozen=True)
class Setup:
    """What a claim's settings state in full: the method's options (its defaults overlaid with the settings; None
    when the method is not installed here), the draft model (None: not stated) and the temperature (0: greedy)."""

    options: dict[str, Any] | None
    draft: str | None = None
    temperature: float = 0.0
    stated: bool = True  # False: the claim names no setting and the method has no complete default (llm2slm)


@dataclass(frozen=True)
class Device:
    """A device name reduced to what must match: how many, the chip's words, and its memory when named."""

    count: int
    chip: tuple[str, ...]
    memory: str | None


def load_reference(path: Path | None = None) -> pd.DataFrame:
    """Published numbers: one row per (paper, model, hardware, task, category, method, settings, metric)."""
    with (path or REFERENCE).open("r", encoding="utf-8") as f:
        return pd.read_csv(f, keep_default_na=False, dtype={"claimed": float})


def against(df: pd.DataFrame, paper: str, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each of `paper`'s claims with the measured row it is compared with (docs/against.md); a ratio
    (measured / claimed, the measured value by the paper's definition) for comparable rows only."""
    reference = load_reference() if reference is None else reference
    claims = reference[reference["paper"] == paper]
    if claims.empty:
        papers = ", ".join(sorted(reference["paper"].unique()))
        raise BenchError(f"no published numbers for {paper!r}; known: {papers}")
    scopes = [scope(task, category) for task, category in zip(df["task"], df["category"], strict=True)]
    rows = df.assign(base_task=df["task"].str.split(":").str[0], scope=scopes)
    return pd.DataFrame([join(paper, claim, rows) for claim in claims.to_dict("records")]).reindex(columns=COLUMNS)


def join(paper: str, claim: dict[str, Any], rows: pd.DataFrame) -> dict[str, Any]:
    """The output row of one claim: its comparable measurement (most samples), else the closest other one."""
    out = {k: claim[k] for k in ("paper", "task", "category", "method", "metric", "claimed")}
    out |= {f"claimed_{k}": claim[k] for k in ("model", "hardware", "settings")}
    found = rows[(rows["base_task"] == claim["task"]) & (rows["scope"] == claim["category"])]
    found = found[found["method"] == claim["method"]].to_dict("records")
    if not found:
        return out | {"matches": 0, "status": "not measured"}
    setup = claim_setup(claim["method"], claim["settings"])
    scored = [(mismatches(claim, setup, row), row) for row in found]
    good = [row for why, row in scored if not why]
    column = definition(paper, claim["metric"])
    if good:
        best = max(good, key=lambda r: (not r.get("flag") and _value(r, column) is not None, r.get("samples") or 0))
        return out | verdict(paper, claim, best) | {"matches": len(good)}
    why, best = min(scored, key=lambda s: (len(s[0]), -(s[1].get("samples") or 0)))
    return out | values(paper, claim, best) | {"matches": 0, "status": "not comparable: " + ", ".join(why)}


def definition(paper: str, metric: str) -> str:
    """The report column that is `metric` as `paper` defines it."""
    return DEFINITIONS.get(paper, {}).get(metric, metric)


def values(paper: str, claim: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A measured row as the output shows it: the value by the paper's definition and by ours."""
    value, ours = _value(row, definition(paper, claim["metric"])), _value(row, claim["metric"])
    return {"measured_model": row["model"], "measured_settings": row["settings"], "measured": value,
            "measured_ours": ours}  # fmt: skip


def verdict(paper: str, claim: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A comparable row's values and its ratio to the claim, or why it has no value."""
    out = values(paper, claim, row)
    if row.get("flag"):
        return out | {"status": f"no measured value ({row['flag']})"}
    if out["measured"] is None:
        return out | {"status": f"no measured value (no {definition(paper, claim['metric'])})"}
    return out | {"ratio": out["measured"] / claim["claimed"], "status": "comparable"}


def _value(row: dict[str, Any], column: str) -> float | None:
    """A row's value of a report column, or of a quality metric relative to the baseline (`PCT_OF_BASELINE`)."""
    if column.endswith(PCT_OF_BASELINE):
        metric = column.removesuffix(PCT_OF_BASELINE)
        value, delta = _value(row, metric), _value(row, f"{metric}_delta")
        if value is None or delta is None or value == delta:
            return None
        return 100 * value / (value - delta)
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def scope(task: str, category: str) -> str:
    """The category a report row covers: its own, or for a row of all samples of a run restricted to one group or
    category (a task's `subset`, e.g. "specbench:mt_bench"), that subset."""
    base, *parts = task.split(":")
    if category != "all" or not parts:
        return category
    try:
        specs = TASKS.get(base).Options.specs()
    except BenchError:  # a task this installation does not have: its rows cover all its samples
        return category
    choices = next((s.choices or () for s in specs if s.name == "subset"), ())
    return next((v for v in parts if v in choices), category)


def claim_setup(method: str, settings: str) -> Setup:
    """A claim's settings ("W=7 N=5 G=7", "max_ngram=3 candidates=10", "draft=double7/vicuna-68m", "T=0.7": labels
    or option names, in any order) resolved against the method's options; a setting the method lacks is an error."""
    try:
        options = METHODS.get(method).Options
    except BenchError:  # a method this installation does not have: no measured row can match it
        return Setup(None)
    specs = {s.name: s for s in options.specs()}
    names = {s.label: s.name for s in specs.values()} | {name: name for name in specs}
    given: dict[str, Any] = {}
    draft, temperature = None, 0.0
    for part in settings.split():
        key, sep, text = part.partition("=")
        if not sep:
            raise BenchError(f"published settings {settings!r} ({method}): {part!r} is not NAME=VALUE")
        if key == "draft":
            draft = text
        elif key in ("T", "temperature"):
            temperature = _parse(float, text, f"{part} ({method})")
        elif key in names:
            spec = specs[names[key]]
            given[spec.name] = _parse(spec.type, text, f"{part} ({method})", spec.optional)
        else:
            raise BenchError(f"published settings {settings!r}: {method} has no option {key!r}")
    try:
        return Setup(options.resolve(given, method).as_dict(), draft, temperature)
    except BenchError:  # a required option (llm2slm's checkpoint): a claim that names none is not checked on it
        if given:
            raise
        return Setup({}, draft, temperature, stated=False)


def _parse(kind: type, text: str, where: str, optional: bool = False) -> Any:
    """A setting's text as a value of `kind`: "False" -> False, "7" -> 7, "None" -> None where allowed."""
    if optional and text == "None":
        return None
    if kind is bool and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind in (int, float, str):
        with suppress(ValueError):
            return kind(text)
    raise BenchError(f"published setting {where} is not a {kind.__name__}")


def mismatches(claim: dict[str, Any], setup: Setup, row: dict[str, Any]) -> list[str]:
    """What differs between a claim's setup and a measured row (empty: comparable)."""
    why = []
    if not same_model(claim["model"], row["model_id"]):
        why.append(f"model {row['model_id']}")
    if not same_hardware(claim["hardware"], str(row.get("device_name")), str(row.get("device"))):
        why.append(f"hardware {row.get('device_name')}")
    if claim["dtype"] and _dtype_short(row["dtype"]) != claim["dtype"]:
        why.append(f"dtype {row['dtype']}")
    temperature = _value(row, "temperature") or 0.0
    if temperature != setup.temperature:
        why.append(f"temperature {temperature:g}")
    draft = row.get("draft") if isinstance(row.get("draft"), str) else None
    if setup.draft and not (draft and same_model(setup.draft, draft)):
        why.append(f"draft {draft}")
    return why + setting_mismatches(claim["method"], setup, row)


def setting_mismatches(method: str, setup: Setup, row: dict[str, Any]) -> list[str]:
    """Every option whose measured value (the default where an older run lacks it) is not the claim's (the
    method's default where the claim is silent)."""
    if setup.options is None:
        return [f"settings (method {method} is not installed here)"]
    if not setup.stated:
        return []
    specs = METHODS.get(method).Options.specs()
    ran = {s.name: s.default for s in specs} | json.loads(row.get("options") or "{}")
    labels = {s.name: s.label for s in specs}
    claimed = setup.options
    return [f"{labels.get(n, n)}={ran[n]} (claimed {claimed.get(n)})" for n in ran if ran[n] != claimed.get(n)]


def canonical_model(spec: str) -> str:
    """A model's hub id, lowercase: a preset name becomes its hub id."""
    preset = PRESETS.get(spec)
    return (preset.hub_id if preset and preset.hub_id else spec).lower()


def same_model(claimed: str, measured: str) -> bool:
    """Whether two model specs name one model: equal hub ids, or equal names where one of them has no owner."""
    a, b = canonical_model(claimed), canonical_model(measured)
    return a == b or (("/" not in a or "/" not in b) and a.split("/")[-1] == b.split("/")[-1])


def device(name: str) -> Device:
    """A device name reduced: "NVIDIA A100-SXM4-80GB" and "A100 80GB PCIe" are 1 x a100 with 80gb, "2xA100
    (pipeline parallel)" is 2 x a100."""
    text = re.sub(r"\(.*?\)", " ", name.lower()).strip()
    count = re.match(r"(\d+)\s*x\s*", text)
    words = [w for w in re.split(r"[^a-z0-9]+", text[count.end() if count else 0 :]) if w and not NOISE.fullmatch(w)]
    memory = next((w for w in words if re.fullmatch(r"\d+gb", w)), None)
    return Device(int(count.group(1)) if count else 1, tuple(w for w in words if w != memory), memory)


def same_hardware(claimed: str, device_name: str, device_kind: str) -> bool:
    """Whether a measurement ran on the claimed hardware: the same chip, as many of them (a report row is one
    device), and the claimed memory where the device name says it. "GPU" claims any CUDA device."""
    want, got = device(claimed), device(device_name)
    if want.chip == ("gpu",):
        return want.count == 1 and device_kind.startswith("cuda")
    memory_ok = want.memory is None or got.memory is None or want.memory == got.memory
    return want.count == got.count and want.chip == got.chip and memory_ok


def _dtype_short(dtype: str) -> str:
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)
