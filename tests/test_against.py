"""`bench report --against`: run directories that claim the papers' exact setups (written with the real store, as
`bench run` writes them) join their published numbers as comparable, with the paper's own speedup definition; a
changed setting, model, device, dtype, draft or temperature does not; every claim appears once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bench import report as rep
from bench.against import against, claim_setup, load_reference, same_hardware, same_model
from bench.records import generation_record
from bench.runner import RunConfig
from bench.store import RunStore
from core.errors import BenchError
from core.timing import Timing
from methods.base import METHODS, Decoded
from tasks.base import TASKS

SXM4, PCIE = "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"
CPU = "Intel(R) Xeon(R) CPU @ 2.20GHz"
SPEC_ROWS = [(81, "writing"), (82, "writing"), (83, "coding"), (161, "translation"), (162, "translation"),
             (241, "summarization"), (321, "qa"), (401, "math_reasoning"), (481, "rag")]  # fmt: skip
LOOKAHEAD_7B = {"window": 15, "ngram": 5, "guess": 15}  # Fu et al. 2024 Fig. 5, Llama-2-7b-chat on MT-bench
SPEC_LOOKAHEAD = {"window": 7, "ngram": 5, "guess": 7}  # Spec-Bench's lade level 5, window 7, guess 7
Timings = Callable[[int], tuple[int, float, float]]  # sample index -> (new tokens, method seconds, baseline seconds)


def varied(i: int) -> tuple[int, float, float]:
    """Samples of different lengths and speedups, so the ratio of totals and the ratio of means differ."""
    tokens = 40 + 10 * i
    return tokens, tokens / 20 / (1.5 + 0.25 * (i % 3)), tokens / 20


def record(role: str, method: str, sample, tokens: int, seconds: float, per_forward: int) -> dict:
    decoded = Decoded(
        list(range(tokens)), [per_forward] * (tokens // per_forward), Timing(seconds / tokens, [], seconds)
    )
    extra = {"sample_id": sample.id, "turn": 1, "prompt_tokens": 12, "category": sample.meta.get("category")}
    return generation_record(role, method, sample.id, decoded, "text") | extra


def write_run(root: Path, data: Path, method: str, *, task: str = "specbench", device: str = SXM4,
              timings: Timings = varied, skip: tuple[str, ...] = (), **fields) -> Path:  # fmt: skip
    """A finished run directory as `bench run` leaves it: manifest (resolved config, environment) and records of
    the method and its AR baseline on every sample of the task (but `skip`)."""
    fields = {"model": "vicuna-7b", "dtype": "float16", "device": "cuda"} | fields
    config = RunConfig(method=method, task=task, **fields).resolve()
    environment = {"device": "cpu" if device == CPU else "cuda:0", "device_name": device, "node_kind": device}
    store = RunStore.open(root, config.identity(), environment)
    task_cls = TASKS.get(task)
    samples = task_cls(data, task_cls.Options.resolve(config.task_options, task)).load()
    for i, sample in enumerate(s for s in samples if s.id not in skip):
        tokens, method_s, baseline_s = timings(i)
        store.append(record("baseline", "ar", sample, tokens, baseline_s, 1))
        store.append(record("method", method, sample, tokens, method_s, 2))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Spec-Bench and Lookahead setups (good/), and one run per changed setup (other/NAME)."""
    root = tmp_path_factory.mktemp("against")
    data = root / "data"
    (data / "spec_bench").mkdir(parents=True)
    (data / "mt_bench").mkdir()
    lines = [{"question_id": q, "category": c, "turns": [f"question {q}", "again"]} for q, c in SPEC_ROWS]
    (data / "spec_bench" / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (data / "mt_bench" / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:3]))
    good = root / "good"
    write_run(good / "pld", data, "pld", skip=("83",))
    write_run(good / "pld-pcie", data, "pld", device=PCIE, timings=lambda i: (50, 1.0, 3.0),
              task_options={"subset": "mt_bench"})  # fmt: skip
    write_run(good / "lookahead", data, "lookahead", options=SPEC_LOOKAHEAD)
    write_run(good / "lookahead-pool", data, "lookahead", options=SPEC_LOOKAHEAD | {"prompt_ngrams": True})
    write_run(good / "speculative", data, "speculative")
    write_run(
        good / "fig5", data, "lookahead", task="mtbench", model="llama2-7b-chat", device=PCIE, options=LOOKAHEAD_7B
    )
    other = root / "other"
    write_run(
        other / "G7", data, "lookahead", task="mtbench", model="llama2-7b-chat", options=LOOKAHEAD_7B | {"guess": 7}
    )
    write_run(other / "adaptive", data, "speculative", options={"adaptive": True})
    write_run(other / "draft", data, "speculative", draft="double7/vicuna-160m")
    write_run(other / "model", data, "pld", model="llama2-7b-chat")
    write_run(other / "h100", data, "pld", device="NVIDIA H100 80GB HBM3")
    write_run(other / "a100-40gb", data, "pld", device="NVIDIA A100-SXM4-40GB")
    write_run(other / "cpu", data, "pld", device=CPU)
    write_run(other / "bf16", data, "pld", dtype="bfloat16")
    write_run(other / "sampling", data, "pld", temperature=0.7)
    write_run(other / "means", data, "pld", timings=lambda i: [(100, 1.0, 2.0), (10, 1.0, 0.5)][i],
              task_options={"subset": "translation"})  # fmt: skip
    return root


def joined(path: Path, paper: str, reference: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report table of the runs under `path` and its join with `paper`'s claims."""
    df = rep.table(rep.find_runs([path]))
    return df, against(df, paper, reference)


def claim(out: pd.DataFrame, **key) -> dict:
    hits = out[(out[list(key)] == pd.Series(key)).all(axis=1)]
    assert len(hits) == 1, hits
    return hits.iloc[0].to_dict()


def test_spec_bench_setups_are_comparable_per_group_and_overall(runs):
    df, out = joined(runs / "good", "spec-bench")
    reference = load_reference()
    assert len(out) == (reference["paper"] == "spec-bench").sum()  # one row per claim, never one per setting
    a100 = out[(out["claimed_hardware"] == "A100-80GB") & out["method"].isin(["pld", "lookahead", "speculative"])]
    assert set(a100["category"]) == {"all", "mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"}
    assert (a100["status"] == "comparable").all(), a100[a100["status"] != "comparable"].to_dict("records")
    assert (a100["ratio"] == a100["measured"] / a100["claimed"]).all()
    pld = claim(out, method="pld", category="all", metric="speedup", claimed_hardware="A100-80GB")
    overall = df[(df["method"] == "pld") & (df["category"] == "all") & (df["task"] == "specbench")].iloc[0]
    assert pld["measured"] == pytest.approx(overall["speedup_of_means"])  # the report's "all" is "overall"
    assert pld["measured_ours"] == pytest.approx(overall["speedup"]) and pld["measured"] != pld["measured_ours"]
    tau = claim(out, method="speculative", category="all", metric="tau", claimed_hardware="A100-80GB")
    assert tau["measured"] == tau["measured_ours"] == pytest.approx(2.0)
    mt = claim(out, method="pld", category="mt_bench", metric="speedup", claimed_hardware="A100-80GB")
    assert mt["matches"] == 2 and mt["measured"] == pytest.approx(3.0)  # the --subset mt_bench run: more samples
    look = claim(out, method="lookahead", category="all", metric="speedup", claimed_hardware="A100-80GB")
    assert look["matches"] == 1 and "prompt_ngrams=False" in look["measured_settings"]
    assert claim(out, method="speculative", category="all", metric="speedup", claimed_hardware="A100-80GB")[
        "measured_settings"
    ].endswith("draft=vicuna-68m")  # a preset name where the claim has the hub id
    rtx = out[out["claimed_hardware"] == "RTX 3090"]
    assert rtx["status"].str.startswith("not comparable: hardware NVIDIA A100").all() and rtx["ratio"].isna().all()
    assert (out[out["method"].isin(["medusa", "eagle", "rest"])]["status"] == "not measured").all()


def test_lookahead_figure5_setup_is_comparable_once(runs):
    _, out = joined(runs / "good", "lookahead")
    assert len(out) == (load_reference()["paper"] == "lookahead").sum()
    row = claim(out, **FIG5_7B)
    assert row["status"] == "comparable" and row["matches"] == 1 and row["ratio"] == row["measured"] / 1.64
    assert row["measured"] == row["measured_ours"]  # the ratio of totals for Lookahead
    others = out[(out["task"] == "mtbench") & (out["claimed_model"] != "meta-llama/Llama-2-7b-chat-hf")]
    assert others["status"].str.startswith("not comparable: model meta-llama/Llama-2-7b-chat-hf").all()
    assert f"hardware {PCIE}," in claim(out, claimed_hardware="2xA100 (pipeline parallel)")["status"]
    assert (out[out["task"] != "mtbench"]["status"] == "not measured").all()


FIG5_7B = {"claimed_model": "meta-llama/Llama-2-7b-chat-hf"}


def spec(method: str) -> dict[str, str]:
    """The key of Spec-Bench's overall A100 speedup claim of `method`."""
    return {"method": method, "category": "all", "metric": "speedup", "claimed_hardware": "A100-80GB"}


@pytest.mark.parametrize(
    ("run", "paper", "key", "why"),
    [
        ("G7", "lookahead", FIG5_7B, "G=7 (claimed 15)"),
        ("adaptive", "spec-bench", spec("speculative"), "adaptive=True (claimed False)"),
        ("draft", "spec-bench", spec("speculative"), "draft double7/vicuna-160m"),
        ("model", "spec-bench", spec("pld"), "model meta-llama/Llama-2-7b-chat-hf"),
        ("h100", "spec-bench", spec("pld"), "hardware NVIDIA H100 80GB HBM3"),
        ("a100-40gb", "spec-bench", spec("pld"), "hardware NVIDIA A100-SXM4-40GB"),
        ("cpu", "spec-bench", spec("pld"), f"hardware {CPU}"),
        ("bf16", "spec-bench", spec("pld"), "dtype bfloat16"),
        ("sampling", "spec-bench", spec("pld"), "temperature 0.7"),
    ],
)
def test_another_setup_is_not_comparable(runs, run, paper, key, why):
    _, out = joined(runs / "other" / run, paper)
    assert len(out) == (load_reference()["paper"] == paper).sum()
    row = claim(out, **key)
    assert row["status"] == f"not comparable: {why}" and pd.isna(row["ratio"]) and row["matches"] == 0
    assert pd.notna(row["measured"])  # shown, without a ratio


def test_each_paper_measures_the_speedup_its_own_way(runs):
    """Two prompts: 100 tokens in 1 s vs 2 s, 10 tokens in 1 s vs 0.5 s. Ratio of totals (110/2)/(110/2.5) = 1.25;
    ratio of mean tokens/s (100+10)/2 / ((50+20)/2) = 55/35 (Spec-Bench's evaluation/speed.py)."""
    df, out = joined(runs / "other" / "means", "spec-bench")
    row = claim(out, method="pld", category="translation")  # a --subset translation run covers the group
    assert row["status"] == "comparable"
    assert row["measured"] == pytest.approx(55 / 35) and row["measured_ours"] == pytest.approx(1.25)
    assert row["ratio"] == pytest.approx(55 / 35 / 1.06)
    lookahead = load_reference().query("paper == 'spec-bench' and method == 'pld' and category == 'translation'")
    _, theirs = joined(runs / "other" / "means", "lookahead", lookahead.assign(paper="lookahead"))
    assert theirs.iloc[0]["measured"] == pytest.approx(1.25)  # Lookahead: the ratio of totals


def test_against_marks_other_models_and_hardware_not_comparable(runs):
    pld = "candidates=10 max_ngram=3"  # labels and option names in any order; match is its default, earliest
    claims = [
        dict(model="lmsys/vicuna-7b-v1.3", hardware="A100", dtype="fp16", task="specbench", category="all",
             method="pld", settings=pld, metric="tau", claimed=1.0),
        dict(model="meta-llama/Llama-2-7b-chat-hf", hardware="H100", dtype="fp16", task="specbench",
             category="all", method="pld", settings=pld, metric="speedup", claimed=1.6),
        dict(model="x", hardware="A100", dtype="fp16", task="gsm8k", category="all", method="pld", settings="",
             metric="speedup", claimed=1.6),
    ]  # fmt: skip
    reference = pd.DataFrame([c | {"paper": "p"} for c in claims])
    _, out = joined(runs / "good" / "pld", "p", reference)
    comparable, other, missing = out.to_dict("records")
    assert comparable["status"] == "comparable" and comparable["ratio"] == pytest.approx(comparable["measured"])
    assert other["status"] == f"not comparable: model lmsys/vicuna-7b-v1.3, hardware {SXM4}"
    assert pd.isna(other["ratio"]) and missing["status"] == "not measured"
    with pytest.raises(BenchError, match="no published numbers for 'nope'"):
        against(out, "nope", reference)


def test_claim_settings_parse_into_the_methods_options():
    assert claim_setup("pld", "candidates=10 max_ngram=3") == claim_setup("pld", "max_ngram=3 num_candidates=10")
    setup = claim_setup("speculative", "draft=double7/vicuna-68m T=0.7")
    assert setup.options == METHODS.get("speculative").Options().as_dict()
    assert (setup.draft, setup.temperature) == ("double7/vicuna-68m", 0.7)
    assert claim_setup("lookahead", "W=7 prompt_ngrams=true").options["prompt_ngrams"] is True
    assert claim_setup("hydra", "anything").options is None  # not installed: nothing can match it
    for bad, message in [("Q=3", "lookahead has no option 'Q'"), ("W=x", "W=x .lookahead. is not a int"),
                         ("8 GPUs", "'8' is not NAME=VALUE"), ("W=0", "--window must be at least 1")]:  # fmt: skip
        with pytest.raises(BenchError, match=message):
            claim_setup("lookahead", bad)


@pytest.mark.parametrize(
    ("claimed", "name", "same"),
    [
        ("A100", SXM4, True), ("A100", PCIE, True), ("A100-80GB", SXM4, True), ("A100-80GB", PCIE, True),
        ("A100-80GB", "NVIDIA A100-SXM4-40GB", False), ("A100-80GB", "NVIDIA A100", True),
        ("A100", "NVIDIA H100 80GB HBM3", False), ("A100", CPU, False), ("RTX 3090", "NVIDIA GeForce RTX 3090", True),
        ("RTX 3090", "NVIDIA GeForce RTX 3090 Ti", False), ("2xA100 (pipeline parallel)", SXM4, False),
        ("8xA100", SXM4, False), ("GPU", SXM4, True), ("GPU", CPU, False),
    ],
)  # fmt: skip
def test_device_names_are_normalised(claimed, name, same):
    assert same_hardware(claimed, name, "cpu" if name == CPU else "cuda:0") is same


def test_model_ids_are_normalised():
    assert same_model("double7/vicuna-68m", "vicuna-68m") and same_model("LMSYS/Vicuna-7B-v1.3", "vicuna-7b")
    assert same_model("lmsys/vicuna-7b-v1.3", "vicuna-7b-v1.3")  # a local folder's name
    assert not same_model("lmsys/vicuna-7b-v1.3", "vicuna-68m") and not same_model("a/vicuna", "b/vicuna")


def test_a_claim_without_settings_on_a_method_that_needs_one():
    """llm2slm needs a checkpoint; the paper's claim names none: its setup is not checked on settings."""
    setup = claim_setup("llm2slm", "")
    assert not setup.stated and setup.options == {}
    with pytest.raises(BenchError, match="llm2slm"):
        claim_setup("llm2slm", "max_length=3")


def test_quality_relative_to_the_baseline_and_time_speedup_for_llm_to_slm():
    from bench.against import _value, definition

    assert definition("llm-to-slm", "speedup") == "speedup_time"  # the SLM's tokens are another tokenizer's
    row = {"bleu": 9.8, "bleu_delta": -0.2}
    assert _value(row, "bleu_pct_of_baseline") == pytest.approx(98.0)
    assert _value({"bleu": 9.8}, "bleu_pct_of_baseline") is None  # no baseline measured
    assert _value({"bleu": 0.0, "bleu_delta": 0.0}, "bleu_pct_of_baseline") is None  # a zero baseline
