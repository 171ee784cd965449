"""LLM-to-SLM: shapes, what trains, training lowers the loss, checkpoints (round trip, refusal, resume), the
adapter for different tokenizers, and `bench train` + `bench run --method llm2slm` end to end on tiny models
(the aligned bridge: tests/test_llm2slm_align.py)."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from bench.checkpoint import read_history
from bench.store import SAMPLES
from bench.train import TrainConfig, train
from core import models as bench_models
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.decode import Sampler, StopRule
from methods.llm2slm import LLM2SLM, STATE_FILE, load_checkpoint
from tasks.base import encode_prompt
from tasks.wmt import TEMPLATE
from tests.conftest import CORPUS, make_tokenizer
from tests.test_cli import bench

PAIRS = [
    ("Das Haus ist klein.", "The house is small."),
    ("Der Hund schläft.", "The dog sleeps."),
    ("Ich trinke Wasser.", "I drink water."),
    ("Wir gehen nach Hause.", "We go home."),
    ("Die Katze ist alt.", "The cat is old."),
    ("Es regnet heute.", "It is raining today."),
    ("Das Buch ist gut.", "The book is good."),
    ("Er liest gern.", "He likes to read."),
]


def other_tokenizer() -> PreTrainedTokenizerFast:
    """A second byte-level BPE with another vocabulary (size, merges and special-token ids) and no chat template."""
    tok = Tokenizer(models.BPE(unk_token="[unk]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=290, special_tokens=["[pad]", "[unk]", "[eos]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([e for _, e in PAIRS] + CORPUS[:2], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[eos]", unk_token="[unk]", pad_token="[pad]")


def decoder(vocab: int, hidden: int, seed: int, eos: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=eos,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def other_tok() -> PreTrainedTokenizerFast:
    return other_tokenizer()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tok, other_tok) -> dict[str, str]:
    """Model folders: the LLM (width 96), a second LLM, the SLM (width 64, same tokenizer), the SLM with its own."""
    root = tmp_path_factory.mktemp("llm2slm-models")
    specs = {
        "llm": (tok, 96, 0),
        "llm2": (tok, 96, 1),
        "slm": (tok, 64, 2),
        "slm_other": (other_tok, 64, 3),
    }
    for name, (tokenizer, hidden, seed) in specs.items():
        decoder(len(tokenizer), hidden, seed, tokenizer.eos_token_id).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: str(root / name) for name in specs}


@pytest.fixture(scope="module")
def wmt_dir(tmp_path_factory) -> str:
    """A data folder with tiny newstest2015-2019 (training) and newstest2014 (evaluation) files."""
    root = tmp_path_factory.mktemp("wmt-data")
    (root / "wmt_de_en").mkdir()
    years = [(2016, PAIRS), (2014, PAIRS[:3])] + [(year, PAIRS[:1]) for year in (2015, 2017, 2018, 2019)]
    for year, pairs in years:
        rows = [json.dumps({"id": i, "src": de, "ref": en}) for i, (de, en) in enumerate(pairs)]
        (root / "wmt_de_en" / f"newstest{year}.de-en.jsonl").write_text("\n".join(rows) + "\n")
    return str(root)


def loaded(path: str) -> LoadedModel:
    return bench_models.load(path)


def config(dirs, wmt_dir, out, **kw) -> TrainConfig:
    base = dict(kind="llm2slm", llm=dirs["llm"], slm=dirs["slm"], task="wmt", data_dir=wmt_dir, out=str(out))
    return TrainConfig(**(base | {"eval_samples": 2, "batch_size": 3, "lr": 3e-3, "steps": 3} | kw))


def prompts(tokenizer) -> list[list[int]]:
    return [encode_prompt(tokenizer, TEMPLATE.format(src=de)) for de, _ in PAIRS[:2]]


def test_projector_shapes_decoder_only_and_t5(dirs, tok):
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=len(tok), d_model=48, d_ff=64, d_kv=16, num_layers=1, num_heads=2, decoder_start_token_id=0)
    ).eval()
    for llm, width in ((loaded(dirs["llm"]), 96), (LoadedModel(t5, tok, {"spec": "tiny-t5"}), 48)):
        model = LLM2SLM(llm, loaded(dirs["slm"]))
        ids = prompts(tok)
        features = model.encode(ids)
        assert [tuple(f.shape) for f in features] == [(len(p), width) for p in ids]
        alone = model.encode(ids[1:])[0]
        torch.testing.assert_close(features[1], alone, atol=1e-5, rtol=1e-5)  # padding does not leak
        assert model.same_vocab and model.bridge.adapter is None
        assert tuple(model.prompt_embeds(ids[0], features[0]).shape) == (len(ids[0]), 64)


@pytest.mark.parametrize("tuning", ["full", "lora", "frozen"])
def test_gradients_reach_only_what_trains(dirs, tok, tuning):
    llm, slm = loaded(dirs["llm"]), loaded(dirs["slm"])
    before = {n: p.clone() for n, p in llm.model.state_dict().items()}
    model = LLM2SLM(llm, slm, "add", tuning)
    ids = prompts(tok)
    answers = [tok(en)["input_ids"] + [tok.eos_token_id] for _, en in PAIRS[:2]]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the projector's last layer starts at zero: its first layer has a gradient from step 2
        total, count = model.loss(ids, model.encode(ids), answers)
        optimizer.zero_grad()
        (total / count).backward()
        optimizer.step()
    assert all(torch.equal(before[n], p) for n, p in llm.model.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in llm.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bridge.parameters())
    slm_grads = {n for n, p in model.slm.named_parameters() if p.grad is not None}
    if tuning == "full":
        assert slm_grads == {n for n, _ in model.slm.named_parameters()}
    elif tuning == "lora":
        assert slm_grads and all("lora_" in n for n in slm_grads)
    else:
        assert not slm_grads


def test_training_lowers_the_loss(dirs, wmt_dir, tmp_path):
    result = train(config(dirs, wmt_dir, tmp_path / "ck", steps=25, eval_every=0), progress=False)
    losses = [r["train_loss"] for r in result.history if r["train_loss"] is not None]
    evals = [r["eval_loss"] for r in result.history if r["eval_loss"] is not None]
    assert len(losses) == 25 and len(evals) == 2  # before the first and after the last step
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert evals[-1] < evals[0]
    saved = read_history(tmp_path / "ck" / "history.csv")
    assert [r["step"] for r in saved] == list(range(26)) and saved[0]["train_loss"] is None
    assert [r["train_loss"] for r in saved[1:]] == pytest.approx(losses)


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_checkpoint_round_trip(dirs, wmt_dir, tmp_path, tok, tuning):
    result = train(config(dirs, wmt_dir, tmp_path / "ck", slm_tuning=tuning), progress=False)
    record = json.loads((tmp_path / "ck" / STATE_FILE).read_text())
    assert record["step"] == 3 and record["wall_s"] > 0 and record["config"]["slm_tuning"] == tuning
    assert record["llm_artifact"]["path"].endswith("llm") and record["slm_artifact"]["path"].endswith("slm")
    restored = load_checkpoint(tmp_path / "ck", loaded(dirs["llm"]))
    for ids in prompts(tok):
        ours = result.model.generate(ids, StopRule(12), Timer(), None)
        theirs = restored.generate(ids, StopRule(12), Timer(), None)
        assert ours.tokens == theirs.tokens and theirs.accepted == [1] * 12
        assert 0 < theirs.encode_s < theirs.timing.first <= theirs.timing.total and len(theirs.timing.steps) == 11
        sampled = [restored.generate(ids, StopRule(8), Timer(), Sampler(0.9, seed=5)).tokens for _ in range(2)]
        assert sampled[0] == sampled[1]


def test_checkpoint_for_another_llm_or_malformed_is_refused(dirs, wmt_dir, tmp_path):
    train(config(dirs, wmt_dir, tmp_path / "ck", steps=1), progress=False)
    with pytest.raises(BenchError, match=r"trained for the LLM .*\(artifacts differ in path, spec\)"):
        load_checkpoint(tmp_path / "ck", loaded(dirs["llm2"]))
    llm = loaded(dirs["llm"])
    with pytest.raises(BenchError, match="not a bench train checkpoint"):
        load_checkpoint(tmp_path, llm)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / STATE_FILE).write_text('{"kind": "llm2slm"}')
    with pytest.raises(BenchError, match="malformed: it lacks config, step"):
        load_checkpoint(tmp_path / "bad", llm)


def test_adapter_when_tokenizers_differ(dirs, tok, other_tok):
    model = LLM2SLM(loaded(dirs["llm"]), loaded(dirs["slm_other"]), "add", "frozen", "adapter")
    assert not model.same_vocab
    assert (model.bridge.adapter.in_features, model.bridge.adapter.out_features) == (96, 64)
    ids = prompts(tok)  # prompts in the LLM's tokens, answers in the SLM's
    answers = [other_tok(en)["input_ids"] + [other_tok.eos_token_id] for _, en in PAIRS[:2]]
    assert max(max(p) for p in ids) >= len(other_tok)  # the SLM could not embed these ids itself
    total, count = model.loss(ids, model.encode(ids), answers)
    total.backward()
    assert count == sum(map(len, answers)) and model.bridge.adapter.weight.grad.abs().sum() > 0
    assert LLM2SLM(loaded(dirs["llm"]), loaded(dirs["slm_other"]), "replace", bridge="adapter").bridge.adapter is None


def test_resume_continues_from_the_saved_step(dirs, wmt_dir, tmp_path):
    whole = train(config(dirs, wmt_dir, tmp_path / "whole", steps=6, slm_tuning="lora"), progress=False)
    train(config(dirs, wmt_dir, tmp_path / "parts", steps=4, save_every=2, slm_tuning="lora"), progress=False)
    resumed = train(config(dirs, wmt_dir, tmp_path / "parts", steps=6, save_every=2, slm_tuning="lora"), progress=False)
    assert [r["step"] for r in resumed.history] == list(range(7))
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in whole.history])
    for (name, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(BenchError, match=r"different config \(lr, seed\)"):
        train(config(dirs, wmt_dir, tmp_path / "parts", steps=8, lr=1e-3, seed=1, slm_tuning="lora"), progress=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--train-split", "newstest2014"], "newstest2014 is the wmt evaluation split"),
        (["--task", "cnndm", "--train-split", "test"], "test is the cnndm evaluation split"),
        (["--task", "cnndm"], "cnn_dailymail/validation.jsonl does not exist"),
        (["--task", "mtbench"], "bench train supports --task wmt or cnndm"),
        (["--llm", "no-such-preset"], "neither a preset"),
        (["--data-dir", "/no/such/dir"], "does not exist"),
    ],
)
def test_bad_train_input(monkeypatch, capsys, dirs, wmt_dir, tmp_path, args, message):
    base = {"--llm": dirs["llm"], "--slm": dirs["slm"], "--task": "wmt", "--data-dir": wmt_dir, "--eval-samples": "2"}
    base |= dict(zip(args[::2], args[1::2], strict=True))
    flags = [x for kv in base.items() for x in kv]
    code, _, err = bench(monkeypatch, capsys, "train", "llm2slm", *flags, "--out", str(tmp_path / "ck"))
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--slm-tuning", "half"], "'half' is not one of 'full', 'lora', 'frozen'"), (["--mode", "mix"], "'mix'")],
)
def test_train_choices_are_usage_errors(monkeypatch, capsys, tmp_path, args, message):
    """--mode and --slm-tuning are choices: click refuses others (exit 2) before anything loads."""
    flags = ["--llm", "x", "--slm", "y", "--task", "wmt", "--out", str(tmp_path / "ck"), *args]
    code, _, err = bench(monkeypatch, capsys, "train", "llm2slm", *flags)
    assert code == 2 and message in " ".join(err.replace("│", " ").split()) and "Traceback" not in err


def test_cli_train_then_run(monkeypatch, capsys, dirs, wmt_dir, tmp_path, other_tok):
    ck, run = str(tmp_path / "ck"), tmp_path / "run"
    train_args = ["--llm", dirs["llm"], "--slm", dirs["slm_other"], "--task", "wmt", "--data-dir", wmt_dir]
    train_args += ["--steps", "3", "--batch-size", "2", "--eval-samples", "2", "--save-every", "2", "--out", ck]
    code, out, err = bench(monkeypatch, capsys, "train", "llm2slm", *train_args)
    assert code == 0, err
    assert "trained to step 3" in out and "history.csv" in out
    run_args = ["--method", "llm2slm", "--checkpoint", ck, "--task", "wmt", "--data-dir", wmt_dir, "--limit", "2"]
    run_args += ["--max-new-tokens", "6", "--warmup", "0", "--out", str(run)]
    code, out, err = bench(monkeypatch, capsys, "run", *run_args)
    assert code == 0, err
    assert "summary" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["model"] == dirs["llm"]  # taken from the checkpoint
    records = [json.loads(line) for line in (run / SAMPLES).read_text().splitlines()]
    method = [r for r in records if r["role"] == "method"]
    assert len(method) == 2 and len([r for r in records if r["role"] == "baseline"]) == 2
    for r in method:
        assert r["method"] == "llm2slm" and r["tau"] == 1.0 and r["exact"] is None
        assert 0 < r["encode_s"] < r["ttft_s"] and max(r["token_ids"]) < len(other_tok)
        assert r["text"] == other_tok.decode(r["token_ids"], skip_special_tokens=True)
    other_llm = [*run_args[:4], "--model", dirs["llm2"], *run_args[4:-1], str(tmp_path / "x")]
    code, _, err = bench(monkeypatch, capsys, "run", *other_llm)
    assert code == 2 and "trained for the LLM" in err and err.count("\n") == 1
    code, _, err = bench(monkeypatch, capsys, "run", "-m", "llm2slm", "-t", "wmt", "--checkpoint", str(tmp_path / "no"))
    assert code == 2 and "not a bench train checkpoint" in err


def test_cli_train_slm_baseline_is_a_model_folder(monkeypatch, capsys, dirs, wmt_dir, tmp_path):
    ck = str(tmp_path / "base")
    args = ["--slm", dirs["slm"], "-t", "wmt", "--data-dir", wmt_dir, "--steps", "2", "--batch-size", "2"]
    args += ["--eval-samples", "2", "--slm-tuning", "lora", "--out", ck]
    code, _, err = bench(monkeypatch, capsys, "train", "slm", *args)
    assert code == 0, err
    record = json.loads((tmp_path / "base" / STATE_FILE).read_text())
    assert record["kind"] == "slm" and record["llm_artifact"] is None and record["step"] == 2
    assert "bridge" not in record["config"]  # no LLM to bridge
    model = bench_models.load(ck)  # LoRA merged: a plain transformers model
    assert not any("lora" in n for n, _ in model.model.named_parameters())
    args = ["-m", "ar", "-t", "wmt", "--model", ck, "--data-dir", wmt_dir, "--limit", "1", "--max-new-tokens", "4"]
    code, _, err = bench(monkeypatch, capsys, "run", *args, "--warmup", "0", "--out", str(tmp_path / "r"))
    assert code == 0, err
