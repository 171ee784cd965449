"""LLM-to-SLM's bridges for different tokenizers: the character-offset alignment on hand-made offsets, the
aligned bridge starting as the SLM alone, its training, saving and reloading, and old checkpoints (no recorded
bridge) loading and resuming as adapter ones. Tiny random models and tokenizers of tests/test_llm2slm.py."""

from __future__ import annotations

import json

import pytest
import torch

from bench.train import train
from core.errors import BenchError
from core.timing import Timer
from methods.base import METHODS
from methods.decode import StopRule
from methods.llm2slm import LLM2SLM, STATE_FILE, load_checkpoint
from methods.llm2slm_align import align, align_prompt, shared_text, token_spans
from tasks.wmt import TEMPLATE
from tests import test_llm2slm as base
from tests.test_llm2slm import PAIRS, config, loaded, prompts

tok, other_tok, dirs, wmt_dir = base.tok, base.other_tok, base.dirs, base.wmt_dir  # its fixtures, shared here


def test_align_hand_made_offsets(tok):
    text = "Hi there, friend!"
    llm = [(0, 0), (0, 2), (2, 8), (8, 9), (9, 16)]  # BOS, "Hi", " there", ",", " friend"
    slm = [(0, 0), (0, 5), (5, 8), (8, 9), (9, 10), (10, 16), (16, 17)]  # BOS, "Hi th", "ere", ",", " ", "friend", "!"
    expected = [
        [0, 0, 0, 0, 0],  # a special token overlaps nothing: its own embedding only
        [0, 0.5, 0.5, 0, 0],  # spans two LLM tokens: their mean
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],  # a whitespace token overlaps the LLM token whose leading space it is
        [0, 0, 0, 0, 1],  # "friend" overlaps " friend" on its characters
        [0, 0, 0, 0, 0],  # no LLM token covers "!"
    ]
    weights = align(text, slm, llm)
    assert weights.shape == (7, 5) and weights.to_dense().tolist() == expected
    assert align("a b", [(1, 3)], [(0, 1), (1, 3)]).to_dense().tolist() == [[0, 1]]  # not "a" through " b"'s space
    with pytest.raises(BenchError, match="not in text order"):
        align(text, slm, [(9, 16), (0, 2)])
    ids = tok("the quick", add_special_tokens=False)["input_ids"]  # "t", "he", " quick"
    chars = [tok.convert_tokens_to_ids(c) for c in tok.convert_ids_to_tokens(ids[-1])]  # " quick" letter by letter
    assert tok("the quick", add_special_tokens=False)["input_ids"] != ids[:-1] + chars  # spans come from decoding
    assert token_spans(tok, ids[:-1] + chars) == ("the quick", [(0, 1), (1, 3), *((i, i + 1) for i in range(3, 9))])


def test_aligned_bridge_starts_as_the_slm_alone(dirs, tok, other_tok):
    """With a zero projection the SLM reads its own tokens and embeddings of the prompt text, so llm2slm's greedy
    output is the SLM's own greedy output on that text."""
    llm, slm = loaded(dirs["llm"]), loaded(dirs["slm_other"])
    model = LLM2SLM(llm, slm, "add", "frozen").for_inference()
    assert model.aligned and model.bridge.adapter is None
    assert all(not p.any() for p in model.bridge.projector[2].parameters())  # the zero projection of `add`
    ids = prompts(tok)[0]
    text = "<|user|>" + TEMPLATE.format(src=PAIRS[0][0]) + "<|assistant|>"  # the LLM's "</s>" is not the SLM's
    assert shared_text(tok, other_tok, ids)[0] == text
    own = other_tok(text)["input_ids"]
    own_ids, weights = align_prompt(tok, other_tok, ids)
    assert own_ids == own and weights.shape == (len(own), len(ids))
    assert torch.sparse.sum(weights, 1).to_dense().tolist() == [1.0] * len(own)
    embeds = model.prompt_embeds(ids, model.encode([ids])[0])
    torch.testing.assert_close(embeds, slm.model.get_input_embeddings()(torch.tensor(own)), atol=0, rtol=0)
    ours = model.generate(ids, StopRule(10), Timer(), None).tokens
    alone = METHODS.get("ar").create(slm).generate(own, StopRule(10), Timer()).tokens
    assert ours == alone
    replace = LLM2SLM(llm, slm, "replace", "frozen")
    assert tuple(replace.prompt_embeds(ids, model.encode([ids])[0]).shape) == (len(own), 64)


@pytest.mark.parametrize("bridge", ["aligned", "adapter"])
def test_bridge_is_trained_saved_and_reloaded(dirs, wmt_dir, tmp_path, tok, bridge):
    out = tmp_path / "ck"
    result = train(config(dirs, wmt_dir, out, slm=dirs["slm_other"], bridge=bridge, steps=2), progress=False)
    assert json.loads((out / STATE_FILE).read_text())["config"]["bridge"] == bridge
    restored = load_checkpoint(out, loaded(dirs["llm"]))
    assert restored.aligned == (bridge == "aligned") and (restored.bridge.adapter is None) == restored.aligned
    for ids in prompts(tok):
        ours = result.model.generate(ids, StopRule(6), Timer(), None).tokens
        assert ours == restored.generate(ids, StopRule(6), Timer(), None).tokens


def test_checkpoint_without_a_bridge_loads_and_resumes_as_adapter(dirs, wmt_dir, tmp_path, tok):
    """A checkpoint from before `bridge` existed was an adapter one: it still loads, and resumes, as one."""
    out = tmp_path / "old"
    kw = dict(slm=dirs["slm_other"], steps=2)
    result = train(config(dirs, wmt_dir, out, bridge="adapter", **kw), progress=False)
    record = json.loads((out / STATE_FILE).read_text())
    del record["config"]["bridge"]
    (out / STATE_FILE).write_text(json.dumps(record))
    restored = load_checkpoint(out, loaded(dirs["llm"]))
    assert not restored.aligned and restored.bridge.adapter is not None
    ids = prompts(tok)[0]
    ours = result.model.generate(ids, StopRule(6), Timer(), None).tokens
    assert restored.generate(ids, StopRule(6), Timer(), None).tokens == ours
    with pytest.raises(BenchError, match=r"different config \(bridge\)"):
        train(config(dirs, wmt_dir, out, **kw | {"steps": 3}), progress=False)  # new runs default to aligned
    assert train(config(dirs, wmt_dir, out, bridge="adapter", **kw | {"steps": 3}), progress=False).step == 3
