"""Perplexity: exp(cross-entropy) of the model over real tokens only, the same in any batching, 1 for a model that
knows every next token; and the fixed text, the first newstest2014 English references with their identity."""

from __future__ import annotations

import hashlib
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from core.errors import BenchError
from core.perplexity import perplexity
from tasks.base import DATA_ENV
from tasks.fixed_text import perplexity_texts
from tests.conftest import REAL_DATA

TEXTS = [
    "the quick brown fox jumps over the lazy dog.",
    "Write a poem about the sea and the sky, with waves and wind.",
    "def add(a, b):\n    return a + b",
    "a",
    "Compose an engaging travel blog post about a recent trip to Hawaii, the sea, the sky and the lazy dog.",
    "the sea",
    "print(add(1, 2)) and the quick brown fox",
    "waves",
    "Hawaii",
]


class Oracle(torch.nn.Module):
    """A fake causal LM that cheats: a huge logit on the true next token of every row (it reads its own input);
    `late`: on the current token instead (wrong wherever a token does not repeat)."""

    def __init__(self, vocab: int, late: bool = False) -> None:
        super().__init__()
        self.vocab, self.late = vocab, late
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        self.seen.append(attention_mask)
        logits = torch.zeros(*input_ids.shape, self.vocab)
        target = input_ids[:, :-1] if self.late else input_ids[:, 1:]
        logits[:, :-1].scatter_(-1, target[..., None], 1e4)
        return SimpleNamespace(logits=logits)


def test_one_text_equals_exp_cross_entropy(tiny, one_thread):
    ids = tiny.tokenizer(TEXTS[1])["input_ids"]
    logits = tiny.model(torch.tensor([ids])).logits[0, :-1]
    expected = math.exp(F.cross_entropy(logits.double(), torch.tensor(ids[1:])).item())
    got = perplexity(tiny.model, tiny.tokenizer, [TEXTS[1]])
    assert got == {"perplexity": pytest.approx(expected, rel=1e-5), "tokens": len(ids) - 1, "texts": 1}
    assert 1.5 < got["perplexity"] < 10 * len(tiny.tokenizer)  # a random model: far from perfect, not absurd


def test_batching_and_padding_do_not_change_it(tiny, one_thread):
    """Batch 1 has no padding at all; batch 8 pads rows of very different lengths (a 1-token text scores nothing)."""
    one = perplexity(tiny.model, tiny.tokenizer, TEXTS, batch_size=1)
    eight = perplexity(tiny.model, tiny.tokenizer, TEXTS, batch_size=8)
    assert one["tokens"] == eight["tokens"] == sum(len(tiny.tokenizer(t)["input_ids"]) - 1 for t in TEXTS)
    assert eight["perplexity"] == pytest.approx(one["perplexity"], rel=1e-4)
    assert one["texts"] == eight["texts"] == len(TEXTS)


def test_max_tokens_cuts_each_text(tiny, one_thread):
    got = perplexity(tiny.model, tiny.tokenizer, TEXTS, max_tokens=5)
    assert got["tokens"] == sum(min(len(tiny.tokenizer(t)["input_ids"]), 5) - 1 for t in TEXTS)


def test_a_perfect_model_scores_one(tiny_tokenizer):
    oracle = Oracle(len(tiny_tokenizer))
    got = perplexity(oracle, tiny_tokenizer, TEXTS, batch_size=4)
    assert got["perplexity"] == pytest.approx(1.0, abs=1e-6) and got["tokens"] > 50
    lengths = sorted(len(tiny_tokenizer(t)["input_ids"]) for t in TEXTS)  # shortest first, right-padded masks
    assert [m.sum(1).tolist() for m in oracle.seen] == [lengths[i : i + 4] for i in range(0, len(TEXTS), 4)]
    assert all(bool((m[:, :-1] >= m[:, 1:]).all()) for m in oracle.seen)


def test_a_wrong_model_scores_above_one(tiny_tokenizer):
    """The same huge logits one token late: (nearly) every prediction is wrong by 1e4 nats; exp overflows to inf."""
    assert perplexity(Oracle(len(tiny_tokenizer), late=True), tiny_tokenizer, TEXTS[:3])["perplexity"] == math.inf


@pytest.mark.parametrize(("texts", "kw", "message"), [
    ([], {}, "at least one text"),
    (TEXTS, {"batch_size": 0}, "batch_size >= 1"),
    (TEXTS, {"max_tokens": 1}, "max_tokens >= 2"),
    (["a", "b"], {}, "no text has two tokens"),
])  # fmt: skip
def test_bad_arguments_are_refused(tiny, texts, kw, message):
    with pytest.raises(BenchError, match=message):
        perplexity(tiny.model, tiny.tokenizer, texts, **kw)


def test_texts_from_a_fixture_folder(tmp_path, monkeypatch):
    folder = tmp_path / "wmt_de_en"
    folder.mkdir()
    rows = [{"id": i, "src": f"Satz {i}.", "ref": f"Sentence {i}."} for i in range(5)]
    (folder / "newstest2014.de-en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    texts, identity = perplexity_texts(None, n=3)  # the folder from $DECODEBENCH_DATA
    assert texts == ["Sentence 0.", "Sentence 1.", "Sentence 2."]
    assert identity["split"] == "newstest2014" and identity["n"] == 3
    assert identity["sha256"] == hashlib.sha256(b"Sentence 0.\nSentence 1.\nSentence 2.").hexdigest()
    assert [(r["source"], r["file"]) for r in identity["read"]] == [("wmt2014", "wmt_de_en/newstest2014.de-en.jsonl")]
    with pytest.raises(BenchError, match="has 5 references, fewer than the 6"):
        perplexity_texts(tmp_path, n=6)
    with pytest.raises(BenchError, match="at least 1 reference"):
        perplexity_texts(tmp_path, n=0)


@pytest.mark.skipif(not (REAL_DATA / "wmt_de_en").is_dir(), reason="needs the real WMT files")
def test_texts_are_200_distinct_newstest2014_references():
    texts, identity = perplexity_texts(REAL_DATA)
    rows = [json.loads(line) for line in (REAL_DATA / "wmt_de_en" / "newstest2014.de-en.jsonl").open()][:200]
    assert texts == [r["ref"] for r in rows] and len(set(texts)) == 200
    assert identity["n"] == 200 and identity["read"][0]["file"] == "wmt_de_en/newstest2014.de-en.jsonl"
    assert perplexity_texts(REAL_DATA) == (texts, identity)  # deterministic
