"""LLM-to-SLM with encoder-decoder and GPT-2 models (tiny random T5 / GPT-2 built here, no download), the LLM
layer the SLM reads (`--llm-layer`), the on-disk feature cache (`--cache-features`) and the wmt training years."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from bench.features import FeatureCache, features_folder
from bench.train import TrainConfig, train, wmt_years
from core import models as bench_models
from core.errors import BenchError
from core.timing import Timer
from methods.decode import StopRule
from methods.llm2slm import LLM2SLM, STATE_FILE, load_checkpoint
from methods.llm2slm_io import llm_features
from tests import test_llm2slm as base
from tests.test_cli import bench
from tests.test_llm2slm import decoder, prompts

tok, other_tok, dirs, wmt_dir = base.tok, base.other_tok, base.dirs, base.wmt_dir  # its fixtures, shared here


def t5(vocab: int, eos: int, pad: int, seed: int) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab, d_model=48, d_ff=64, d_kv=16, num_layers=2, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos, tie_word_embeddings=False,
    )  # fmt: skip
    return T5ForConditionalGeneration(config).eval()


def gpt2(vocab: int, eos: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=512, eos_token_id=eos)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def seq2seq_dirs(tmp_path_factory, tok, other_tok) -> dict[str, str]:
    """Folders: a T5 LLM and a T5 SLM (the shared test tokenizer), a GPT-2 SLM (another tokenizer)."""
    root = tmp_path_factory.mktemp("seq2seq-models")
    eos, pad = tok.eos_token_id, tok.pad_token_id if tok.pad_token_id is not None else 0
    specs = {
        "t5_llm": (t5(len(tok), eos, pad, 0), tok),
        "t5_slm": (t5(len(tok), eos, pad, 1), tok),
        "gpt2_slm": (gpt2(len(other_tok), other_tok.eos_token_id, 2), other_tok),
    }
    for name, (model, tokenizer) in specs.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: str(root / name) for name in specs}


def small(out, **kw) -> TrainConfig:
    base = dict(kind="llm2slm", task="wmt", out=str(out), eval_samples=2, batch_size=3, lr=3e-3, steps=4)
    return TrainConfig(**(base | kw))


def generate(model: LLM2SLM, ids: list[int], n: int) -> list[int]:
    return model.generate(ids, StopRule(n), Timer(), None).tokens


@pytest.mark.parametrize(("llm", "slm"), [("t5_llm", "gpt2_slm"), ("llm", "t5_slm"), ("t5_llm", "t5_slm")])
def test_encoder_decoder_models_train_and_generate(dirs, seq2seq_dirs, wmt_dir, tmp_path, tok, llm, slm):
    """T5 as the LLM (its encoder's features), T5 as the SLM (the bridged prompt is its encoder input), GPT-2 as a
    decoder-only SLM with its own tokenizer: training lowers the held-out loss and the checkpoint generates."""
    folders = dirs | seq2seq_dirs
    result = train(small(tmp_path / "ck", llm=folders[llm], slm=folders[slm], data_dir=wmt_dir), progress=False)
    losses = [r["eval_loss"] for r in result.history if r["eval_loss"] is not None]
    assert losses[-1] < losses[0]
    model = load_checkpoint(tmp_path / "ck", bench_models.load(folders[llm]))
    assert model.encoder_decoder == (slm == "t5_slm")
    ids = prompts(bench_models.load(folders[llm]).tokenizer)[0]
    tokens = generate(model, ids, 5)
    assert len(tokens) == 5 and max(tokens) < len(model.slm_tokenizer)


def test_encoder_decoder_slm_decodes_as_a_full_recompute(dirs, seq2seq_dirs, tok):
    """The cached decoder loop gives the greedy tokens of re-running the whole decoder at every step."""
    llm, slm = bench_models.load(dirs["llm"]), bench_models.load(seq2seq_dirs["t5_slm"])
    model = LLM2SLM(llm, slm).for_inference()
    torch.nn.init.normal_(model.bridge.projector[2].weight, std=0.5)  # a projection that changes the output
    ids = prompts(tok)[1]
    embeds = model.prompt_embeds(ids, model.encode([ids])[0])[None]
    expected = [slm.model.config.decoder_start_token_id]
    with torch.no_grad():
        for _ in range(6):
            logits = model.slm(inputs_embeds=embeds, decoder_input_ids=torch.tensor([expected])).logits
            expected.append(int(logits[0, -1].argmax()))
    assert generate(model, ids, 6) == expected[1:]


def test_other_methods_refuse_an_encoder_decoder_model(monkeypatch, capsys, seq2seq_dirs, wmt_dir, tmp_path):
    args = ["-m", "ar", "-t", "wmt", "--model", seq2seq_dirs["t5_llm"], "--data-dir", wmt_dir, "--limit", "1"]
    code, _, err = bench(monkeypatch, capsys, "run", *args, "--out", str(tmp_path / "r"))
    assert code == 2 and "needs a decoder-only model" in err and err.count("\n") == 1


def test_llm_layer_reads_that_block_and_is_recorded(dirs, wmt_dir, tmp_path, tok):
    config = decoder(len(tok), 96, 3, tok.eos_token_id).config
    config.num_hidden_layers = 2
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    llm = bench_models.load(str(tmp_path / "llm"))
    ids = torch.tensor(prompts(tok)[:1])
    hidden = llm.model.base_model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(llm_features(llm.model, ids, layer=1), hidden[1])  # block 1's output, no norm
    assert not torch.allclose(llm_features(llm.model, ids, layer=1), llm_features(llm.model, ids))
    torch.testing.assert_close(llm_features(llm.model, ids, layer=2), llm_features(llm.model, ids))  # the last
    with pytest.raises(BenchError, match="--llm-layer must be -1"):
        LLM2SLM(llm, bench_models.load(dirs["slm"]), llm_layer=3)
    cfg = small(tmp_path / "ck", llm=str(tmp_path / "llm"), slm=dirs["slm"], data_dir=wmt_dir, llm_layer=1)
    train(cfg, progress=False)
    assert json.loads((tmp_path / "ck" / STATE_FILE).read_text())["config"]["llm_layer"] == 1
    assert load_checkpoint(tmp_path / "ck", llm).llm_layer == 1


def test_cached_features_are_read_back_from_disk(monkeypatch, dirs, tmp_path, tok):
    monkeypatch.setenv("DECODEBENCH_CACHE", str(tmp_path / "cache"))
    llm = bench_models.load(dirs["llm"])
    model = LLM2SLM(llm, bench_models.load(dirs["slm"]))
    folder = features_folder(llm.artifact, -1)
    assert folder != features_folder(llm.artifact, 1) and folder.is_relative_to(tmp_path / "cache")
    ids = prompts(tok)
    first = FeatureCache(model.encode, ids, model.dtype, folder)
    computed = first.get([0, 1, 0])
    assert first.encoded == 2 and len(list(folder.glob("*.safetensors"))) == 2
    again = FeatureCache(lambda _: pytest.fail("the LLM ran again"), ids, model.dtype, folder)
    for a, b in zip(again.get([1, 0]), computed[1::-1], strict=True):
        torch.testing.assert_close(a, b)
    other = bench_models.load(dirs["llm2"])  # other weights: another folder, never these features
    assert features_folder(other.artifact, -1) != folder


def test_wmt_training_years():
    assert wmt_years("newstest2015-2019") == [2015, 2016, 2017, 2018, 2019]
    assert wmt_years("newstest2016") == [2016] and wmt_years("2017") == [2017]
    for split, message in (("newstest2014-2016", "evaluation split"), ("newstest2019-2015", "empty range"),
                           ("newstest2013", "unknown wmt split"), ("newstest2015-", "unknown wmt split")):  # fmt: skip
        with pytest.raises(BenchError, match=message):
            wmt_years(split)


def test_feature_norm_makes_the_projection_scale_free_and_is_recorded(dirs, wmt_dir, tmp_path, tok):
    llm, slm = bench_models.load(dirs["llm"]), bench_models.load(dirs["slm"])
    model = LLM2SLM(llm, slm, feature_norm=True)
    torch.nn.init.normal_(model.bridge.projector[2].weight, std=0.5)
    features = model.encode(prompts(tok)[:1])[0]
    torch.testing.assert_close(model.bridge.project(100 * features), model.bridge.project(features), atol=1e-4, rtol=0)
    plain = LLM2SLM(llm, slm)
    torch.nn.init.normal_(plain.bridge.projector[2].weight, std=0.5)
    assert not torch.allclose(plain.bridge.project(100 * features), plain.bridge.project(features))
    cfg = small(tmp_path / "ck", llm=dirs["llm"], slm=dirs["slm"], data_dir=wmt_dir, feature_norm=True)
    trained = train(cfg, progress=False).model
    assert json.loads((tmp_path / "ck" / STATE_FILE).read_text())["config"]["feature_norm"] is True
    restored = load_checkpoint(tmp_path / "ck", llm)
    torch.testing.assert_close(restored.bridge.project(features), trained.bridge.project(features))
