"""Shared fixtures: tiny randomly initialised models and tokenizers built in the tests (no downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.models import LoadedModel
from tasks.base import DATA_ENV

# The real task data: $DECODEBENCH_DATA, else the shared folder beside the checkout (tests using it skip without it).
REAL_DATA = Path(os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")

CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "Write a poem about the sea and the sky, with waves and wind.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "Compose an engaging travel blog post about a recent trip to Hawaii.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(vocab: int, seed: int = 0, layers: int = 2, eos: int | None = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=eos,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    # Random init gives nearly flat logits; sharpen them so greedy choices are not near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny(tiny_tokenizer) -> LoadedModel:
    model = make_model(len(tiny_tokenizer), eos=tiny_tokenizer.eos_token_id)
    return LoadedModel(model, tiny_tokenizer, {"spec": "tiny", "dtype": "float32"})


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny) -> Path:
    """The tiny model and tokenizer saved as a local model folder (what `--model PATH` loads)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data folder in the shared/data layout with a few MT-bench-style questions."""
    root = tmp_path_factory.mktemp("data")
    (root / "mt_bench").mkdir()
    rows = [
        {"question_id": 81 + i, "category": cat, "turns": [text, "Now say it shorter."]}
        for i, (cat, text) in enumerate(
            [
                ("writing", "Write a poem about the sea."),
                ("coding", "def add(a, b): return"),
                ("writing", "Compose a travel blog post about Hawaii."),
                ("roleplay", "the quick brown fox"),
            ]
        )
    ]
    (root / "mt_bench" / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run on one intra-op thread: two threads spin-wait against each other on a shared CPU (100x
    slower steps under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
