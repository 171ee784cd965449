"""The core layer: option schemas, the registry, metric declarations, the one aggregation, file reading."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass

import pytest

from bench.records import aggregate
from core.errors import BenchError
from core.files import portable, read_jsonl
from core.metrics import Metric
from core.options import Options, option
from core.registry import Registry


@dataclass(frozen=True)
class Demo(Options):
    steps: int = option(3, "steps", flags=("-s",), min=1, label="S")
    rate: float = option(0.5, "rate", max=1.0)
    mode: str = option("a", "mode", choices=("a", "b"))
    extra: str | None = option(None, "optional")
    on: bool = option(True, "switch")


def test_options_resolve_fills_defaults_and_checks_values():
    assert Demo.resolve({}, "demo").as_dict() == {"steps": 3, "rate": 0.5, "mode": "a", "extra": None, "on": True}
    assert Demo.resolve({"rate": 1, "extra": "x"}, "demo").rate == 1.0  # an int is a float
    assert [s.label for s in Demo.specs()] == ["S", "rate", "mode", "extra", "on"]
    assert Demo.specs()[0].flags == ("-s",) and Demo.specs()[3].optional
    bad = [
        ({"nope": 1, "other": 2}, "method demo does not take --nope, --other"),
        ({"steps": 0}, "--steps must be at least 1 (got 0)"),
        ({"steps": "3"}, "--steps must be int (got '3')"),
        ({"steps": True}, "--steps must be int (got True)"),
        ({"rate": 2.0}, "--rate must be at most 1.0"),
        ({"mode": "c"}, "--mode must be one of a, b (got 'c')"),
        ({"on": 1}, "--on must be bool"),
        ({"mode": None}, "--mode must be str (got None)"),
    ]
    for given, message in bad:
        with pytest.raises(BenchError, match=re.escape(message)):
            Demo.resolve(given, "demo")


class _Thing:
    name = "thing"


class _Other:
    name = "thing"


def test_registry_refuses_a_second_class_under_one_name():
    registry: Registry = Registry("widget", "tasks", "decodebench.no-such-group")
    registry.register(_Thing)
    registry.register(_Thing)  # the same class again (a module imported twice) is fine
    with pytest.raises(BenchError, match="widget 'thing' is registered twice"):
        registry.register(_Other)
    with pytest.raises(BenchError, match="unknown widget 'nope'; known: thing"):
        registry.get("nope")


def test_metric_direction():
    assert Metric("bleu", "").worse(20.0, 22.0, tolerance=1.0)
    assert not Metric("bleu", "").worse(21.5, 22.0, tolerance=1.0)
    assert Metric("latency", "", higher_is_better=False).worse(12.0, 10.0, tolerance=1.0)
    assert not Metric("latency", "", higher_is_better=False).worse(8.0, 10.0, tolerance=1.0)


def _record(pid: str, tokens: int, seconds: float, forwards: int, **extra) -> dict:
    return {"prompt_id": pid, "new_tokens": tokens, "total_s": seconds, "target_forwards": forwards,
            "tokens_per_s": tokens / seconds, "ttft_s": 0.1, "tpot_s": 0.01, "encode_s": None} | extra  # fmt: skip


def test_aggregate_one_set_of_names_and_units():
    method = [_record("a", 10, 1.0, 5, exact=True), _record("b", 30, 1.0, 10, exact=False), _record("c", 5, 1.0, 5)]
    baseline = [_record("a", 10, 2.0, 10), _record("b", 30, 6.0, 30)]
    row = aggregate(method, baseline)
    assert row["samples"] == 3 and row["new_tokens"] == 45 and row["tokens_per_s"] == 15.0
    assert row["tau"] == 45 / 20 and row["exact_rate"] == 0.5
    assert row["ttft_ms_median"] == pytest.approx(100.0) and row["tpot_ms_p90"] == pytest.approx(10.0)
    assert row["encode_ms_median"] is None
    # speedup on the shared ids a and b only: a ratio of totals (40 tok / 2 s) / (40 tok / 8 s)
    assert row["paired_samples"] == 2 and row["speedup"] == pytest.approx(4.0)
    assert row["speedup_mean"] == pytest.approx((2.0 + 6.0) / 2)
    assert row["speedup_of_means"] == pytest.approx(((10 + 30) / 2) / ((5 + 5) / 2))
    assert row["speedup_ci_low"] <= row["speedup"] <= row["speedup_ci_high"]
    assert row["overhead"] == pytest.approx(row["tau"] / 4.0)
    assert aggregate([], baseline) == {"samples": 0} and aggregate(method)["speedup"] is None


def test_read_jsonl_names_the_file_on_corruption(tmp_path):
    good = tmp_path / "good.jsonl.gz"
    with gzip.open(good, "wt") as f:
        f.write(json.dumps({"a": 1}) + "\n")
    assert read_jsonl(good, ("a",)) == [{"a": 1}]
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(good.read_bytes()[:-8])
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"a": 1}\n')
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"a": "\xe9"}\n')
    cases = ((truncated, "not a valid gzip file"), (plain, "not a valid gzip file"), (latin, "not UTF-8 .at line 1"))
    for path, message in cases:
        with pytest.raises(BenchError, match=f"{path.name}: {message}"):
            read_jsonl(path, ("a",))


def test_portable_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "wmt").mkdir(parents=True)
    monkeypatch.setenv("DECODEBENCH_DATA", str(tmp_path / "data"))
    assert portable(tmp_path / "runs" / "x") == "runs/x"
    monkeypatch.chdir(tmp_path / "data" / "wmt")
    assert portable(tmp_path / "data" / "wmt" / "a.jsonl") == "a.jsonl"
    assert portable(tmp_path / "data") == "$DECODEBENCH_DATA"
    assert portable("/somewhere/else/model") == "model"
