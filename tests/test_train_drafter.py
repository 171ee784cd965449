"""`bench train medusa|eagle` end to end on the tiny model: the loss falls, the folder loads with the method and
decodes as `ar` does, an interrupted run resumes where it was saved without regenerating answers (and ends where an
uninterrupted run ends), the default prompt mix holds no evaluation sample, and bad input is one `error:` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench import drafter_data
from bench.cli import app
from bench.drafter_data import Continuation, default_prompts, encode, evaluation_texts, file_prompts, normalize
from bench.train_drafter import Run
from core import models
from core.errors import BenchError
from core.timing import Timer
from methods.base import METHODS
from methods.decode import StopRule
from methods.draft_vocab import SubsetHead, frequent_tokens
from tasks.sources import load_rows
from tests.conftest import REAL_DATA, make_model
from tests.test_methods import PROMPTS, assert_equals_ar

PROMPT_LINES = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(24)]
SHORT = ["--answer-tokens", "20", "--eval-samples", "6", "--eval-every", "4", "--save-every", "4", "--steps", "12"]
SHORT += ["--threads", "1"]  # tiny models on a shared 2-core machine: one thread is many times faster


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_dir):
    """A prompt file and a feature cache of this module's own; the tiny model's folder."""
    root = tmp_path_factory.mktemp("train-drafter")
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPT_LINES[:-1]) + json.dumps(
        {"messages": [{"role": "user", "content": "Write a poem about the sea."}]}) + "\n")  # fmt: skip
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DECODEBENCH_CACHE", str(root / "cache"))
        yield {"root": root, "data": data, "model": tiny_dir}
    torch.set_num_threads(threads)  # --threads 1 set it for this process


def bench(*args: object) -> object:
    return CliRunner().invoke(app, ["train", *map(str, args)])


def command(env, kind: str, out: Path, *extra: object) -> list[object]:
    recipe = ["--heads", "2"] if kind == "medusa" else ["--lr", "1e-3"]
    return [kind, "--model", env["model"], "--out", out, "--data", env["data"], *SHORT, *recipe, *extra]


@pytest.fixture(scope="module")
def trained(env):
    """One finished run of each kind."""
    runs = {}
    for kind in ("medusa", "eagle"):
        result = bench(*command(env, kind, env["root"] / kind))
        assert result.exit_code == 0, result.output
        runs[kind] = env["root"] / kind
    return runs


def history(out: Path) -> list[dict[str, str]]:
    lines = (out / "history.csv").read_text().splitlines()
    return [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_training_lowers_the_held_out_loss_and_writes_the_folder(trained, kind):
    out = trained[kind]
    rows = history(out)
    evals = [float(r["eval_loss"]) for r in rows if r["eval_loss"]]
    assert [int(r["step"]) for r in rows] == list(range(13))
    assert len(evals) == 4 and evals == sorted(evals, reverse=True) and evals[-1] < 0.9 * evals[0]
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["step"] == 12 and record["prompts"] == {"train": 18, "held_out": 6, "skipped_long": 0}
    meta = json.loads((out / "config.json").read_text())["decodebench"]
    assert meta["step"] == 12 and meta["recipe"]["kind"] == kind and meta["target_key"] == record["target_key"]
    assert (out / "loss.png").stat().st_size > 1000
    assert len((out / "distill.jsonl").read_text().splitlines()) == 24


@pytest.mark.parametrize("method", ["medusa", "eagle", "eagle2"])
def test_the_folder_loads_with_the_method_and_decodes_as_ar(trained, env, method):
    target = models.load(str(env["model"]))
    folder = trained["medusa" if method == "medusa" else "eagle"]
    decoder = METHODS.get(method).create(target, None, {"draft_heads": str(folder)})
    assert_equals_ar(decoder, target, PROMPTS[:2], 24, method)


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    pt = out / "medusa_lm_head.pt"
    return torch.load(pt, weights_only=True) if pt.is_file() else load_file(out / "model.safetensors")


@pytest.mark.parametrize("kind", ["medusa", "eagle"])  # eagle: its feature noise draws from the restored RNG
def test_an_interrupted_run_resumes_at_its_checkpoint_without_regenerating(env, trained, monkeypatch, kind):
    out = env["root"] / f"resumed-{kind}"
    calls, stop = [], [2]  # stop at the second generation call
    real_generate, real_advance = drafter_data.generate, Run.advance

    def generate(*args):
        calls.append(len(args[1]))
        if len(calls) in stop:
            raise KeyboardInterrupt
        return real_generate(*args)

    monkeypatch.setattr(drafter_data, "generate", generate)
    result = bench(*command(env, kind, out))  # interrupted while generating the second batch
    assert result.exit_code == 130 and "run the same command again" in result.output
    assert len((out / "distill.jsonl").read_text().splitlines()) == 16  # the first batch

    def advance(run):
        if run.step == 6:
            raise KeyboardInterrupt
        return real_advance(run)

    monkeypatch.setattr(Run, "advance", advance)
    calls.clear()
    stop.clear()
    assert bench(*command(env, kind, out)).exit_code == 130  # generated the rest, trained to 6, saved at 4
    assert calls == [8] and json.loads((out / "checkpoint.json").read_text())["step"] == 4
    monkeypatch.setattr(Run, "advance", real_advance)
    calls.clear()
    result = bench(*command(env, kind, out))
    assert result.exit_code == 0, result.output
    assert calls == []  # every answer came from distill.jsonl
    assert [int(r["step"]) for r in history(out)] == list(range(13))
    assert (out / "distill.jsonl").read_text() == (trained[kind] / "distill.jsonl").read_text()
    ours, whole = weights(out), weights(trained[kind])
    assert ours.keys() == whole.keys()
    assert all(torch.allclose(ours[k], whole[k], atol=1e-6) for k in whole)  # as if never interrupted


@pytest.mark.skipif(not (REAL_DATA / "spec_bench").is_dir(), reason="needs the shared data folder")
def test_the_default_mix_holds_no_evaluation_sample():
    prompts = default_prompts(REAL_DATA, 3 * 1221, seed=0)  # every distinct story opening; GSM8K: 1221 of 1239
    seen = evaluation_texts(REAL_DATA)
    assert len(prompts) == len(set(prompts)) == 3 * 1221
    assert not [p for p in prompts if normalize(p) in seen]
    specbench = {r["turns"][0] for r in load_rows("specbench", REAL_DATA) if r["category"] == "math_reasoning"}
    gsm8k = {r["question"] for r in load_rows("gsm8k", REAL_DATA)}
    assert len(specbench & gsm8k) == 80 and not specbench & set(prompts) and len(gsm8k & set(prompts)) == 1221
    newstest2014 = {normalize(r["src"]) for r in load_rows("wmt2014", REAL_DATA)}
    sources = [p.removeprefix("Translate German to English: ") for p in prompts if p.startswith("Translate")]
    assert len(sources) == 1221 and not [s for s in sources if normalize(s) in newstest2014]
    assert sum(p.startswith("Continue the story: ") for p in prompts) == 1221
    assert default_prompts(REAL_DATA, 30, seed=0) == default_prompts(REAL_DATA, 30, seed=0)
    assert default_prompts(REAL_DATA, 30, seed=0) != default_prompts(REAL_DATA, 30, seed=1)
    assert normalize("Singapur , da") == normalize("Singapur, da")  # Spec-Bench's tokenized sources match


def test_refusals_are_one_error_line(env, trained, tmp_path):
    other = tmp_path / "other-model"
    target = models.load(str(env["model"]))
    make_model(len(target.tokenizer), seed=1).save_pretrained(other)
    target.tokenizer.save_pretrained(other)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"txt": "no prompt"}\n')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    cases = {
        "neither a preset": ["medusa", "--model", "no-such-model", "--out", tmp_path / "a", "--data", env["data"]],
        "does not exist": command(env, "medusa", tmp_path / "b", "--data", tmp_path / "missing.jsonl"),
        "record 2 needs": command(env, "eagle", tmp_path / "c", "--data", bad),
        "--steps must be at least 1": command(env, "medusa", tmp_path / "d", "--steps", "0"),
        "--heads must be at least 1": command(env, "medusa", tmp_path / "e", "--heads", "0"),
        "--lr must be a positive": command(env, "eagle", tmp_path / "f", "--lr", "-1"),
        "leaves no training prompts": command(env, "medusa", tmp_path / "g", "--eval-samples", "24"),
        "different recipe (lr)": command(env, "medusa", trained["medusa"], "--lr", "0.01"),
        "not a bench train medusa folder": command(env, "medusa", tmp_path / "full"),
    }
    copy = tmp_path / "copy"  # the same folder with other weights: refused on resume
    target.model.save_pretrained(copy)
    target.tokenizer.save_pretrained(copy)
    assert bench("medusa", "--model", copy, *command(env, "medusa", tmp_path / "h")[3:], "--steps", 1).exit_code == 0
    (other / "model.safetensors").replace(copy / "model.safetensors")
    cases["other weights of the target"] = ["medusa", "--model", copy, *command(env, "medusa", tmp_path / "h")[3:],
                                            "--steps", 1]  # fmt: skip
    cases["different recipe (model)"] = ["medusa", "--model", copy, *command(env, "medusa", trained["medusa"])[3:]]
    for message, args in cases.items():
        result = bench(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (message, result.output)
        assert message in lines[0], (message, lines[0])


def test_answers_from_another_run_are_reused_not_regenerated(env, trained, monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("the answers were generated again")

    monkeypatch.setattr(drafter_data, "generate", no_generation)
    out = env["root"] / "eagle-reusing"
    steps = ["--steps", "1", "--eval-every", "0"]
    result = bench(*command(env, "eagle", out, *steps, "--answers-from", trained["medusa"]))
    assert result.exit_code == 0, result.output
    assert (out / "distill.jsonl").read_text() == (trained["medusa"] / "distill.jsonl").read_text()
    other = env["root"] / "other-prompts"
    result = bench(*command(env, "eagle", other, *steps, "--prompts", "10", "--answers-from", trained["medusa"]))
    assert result.exit_code == 2 and "holds answers to other prompts" in result.output


def test_text_records_are_continued_as_they_stand(env, tmp_path):
    path = tmp_path / "code.jsonl"
    code = "def add(a, b):\n    "
    path.write_text(json.dumps({"text": code}) + "\n" + json.dumps({"prompt": code}) + "\n")
    raw, chat = file_prompts(path)
    assert raw == Continuation(code) and chat == code
    tokenizer = models.load(str(env["model"])).tokenizer
    assert encode(tokenizer, raw) == tokenizer(code)["input_ids"]
    assert encode(tokenizer, chat) != encode(tokenizer, raw)  # the chat template wraps the other


@pytest.mark.parametrize("kind", ["medusa", "eagle"])
def test_bfloat16_targets_train_in_mixed_precision(env, trained, kind):
    out = env["root"] / f"bf16-{kind}"
    result = bench(*command(env, kind, out, "--dtype", "bfloat16", "--answers-from", trained[kind]))
    assert result.exit_code == 0, result.output
    evals = [float(r["eval_loss"]) for r in history(out) if r["eval_loss"]]
    assert len(evals) == 4 and evals[-1] < 0.9 * evals[0]
    assert all(w.dtype == torch.float32 for name, w in weights(out).items() if "embed" not in name)  # fp32 master
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["recipe"]["dtype"] == "bfloat16" and record["target"]["dtype"] == "bfloat16"
    assert "dtype" not in json.loads((trained[kind] / "checkpoint.json").read_text())["recipe"]  # fp32: as before
    target = models.load(str(env["model"]), dtype="bfloat16")
    decoder = METHODS.get("medusa" if kind == "medusa" else "eagle2").create(target, None, {"draft_heads": str(out)})
    got = decoder.generate(target.tokenizer(PROMPTS[0])["input_ids"], StopRule(8), Timer())
    assert len(got.tokens) == sum(got.accepted) == 8  # loads and drafts in bf16


@pytest.mark.parametrize("method", ["medusa", "eagle", "eagle2"])
def test_a_reduced_draft_vocabulary_drafts_only_its_tokens_and_decodes_as_ar(trained, env, method):
    target = models.load(str(env["model"]))
    folder = trained["medusa" if method == "medusa" else "eagle"]
    decoder = METHODS.get(method).create(target, None, {"draft_heads": str(folder), "draft_vocab": 40})
    assert_equals_ar(decoder, target, PROMPTS[:2], 24, method)
    allowed = set(frequent_tokens(folder, 40, len(target.tokenizer)).tolist())
    assert len(allowed) == 40 < len(target.tokenizer)
    drafter, ids = decoder.drafter(), target.tokenizer(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        hidden = target.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    drafter.observe_hidden(hidden[:-1])
    draft = drafter.propose(ids, 8)
    assert draft is not None and draft.tokens and set(draft.tokens) <= allowed


def test_the_draft_vocabulary_is_the_most_frequent_tokens_of_the_training_data(tmp_path):
    lines = [{"prompt": [5, 5, 2], "answer": [7, 5, 9, 9]}, {"prompt": [1], "answer": [9, 3]}]
    (tmp_path / "distill.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert frequent_tokens(tmp_path, 2, 12).tolist() == [5, 9]  # 3 each
    assert frequent_tokens(tmp_path, 6, 12).tolist() == [1, 2, 3, 5, 7, 9]  # count 1: by id
    assert frequent_tokens(tmp_path, 7, 12).tolist() == [0, 1, 2, 3, 5, 7, 9]  # unseen: the lowest id first
    head = torch.nn.Linear(4, 12, bias=False)
    subset = SubsetHead(head, torch.tensor([2, 9]))
    x = torch.randn(3, 4)
    logits = subset(x)
    assert torch.allclose(logits[:, [2, 9]], head(x)[:, [2, 9]]) and logits[:, [0, 1, 3, 11]].isinf().all()
    (tmp_path / "distill.jsonl").write_text('{"prompt": [1]}\n')
    with pytest.raises(BenchError, match="not a bench train distill file"):
        frequent_tokens(tmp_path, 2, 12)
    with pytest.raises(BenchError, match="is missing"):
        frequent_tokens(tmp_path / "none", 2, 12)
