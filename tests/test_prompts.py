"""Prompts controlled and logged: chat templates rendered as FastChat does, one BOS, `--chat-template` and
`--system-prompt` on the command line and in sweeps, prompt ids in every record, the template and the data's
identity in the manifest (no machine path), and cnndm subsets that mean the same articles locally and on the hub."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import pytest
from tokenizers import processors

from bench.runner import RunConfig, run
from bench.store import MANIFEST, SAMPLES
from bench.sweep import cells, load_config
from core.errors import BenchError
from tasks import chat
from tasks.base import DATA_ENV, TASKS
from tasks.cnndm import CNNDailyMail, CNNDailyMailOptions
from tasks.sources import load_rows, tracing
from tests.conftest import CHAT_TEMPLATE, make_tokenizer
from tests.test_cli import bench

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
POEM = [("Write a poem.", " Roses are red.\n")]  # the answer as decoded; templates strip it, as FastChat's callers do
TWO = "USER: Write a poem. ASSISTANT: Roses are red.</s>USER: Shorter ASSISTANT:"


@pytest.mark.parametrize(
    ("name", "system", "history", "expected"),
    [
        ("vicuna_v1.1", None, [], f"{VICUNA} USER: Shorter ASSISTANT:"),
        ("vicuna_v1.1", None, POEM, f"{VICUNA} {TWO}"),
        ("vicuna_v1.1", "Be brief.", POEM, f"Be brief. {TWO}"),
        ("llama-2-chat", None, [], "[INST] Shorter [/INST]"),
        ("llama-2-chat", None, POEM, "[INST] Write a poem. [/INST] Roses are red. </s><s>[INST] Shorter [/INST]"),
        ("llama-2-chat", "Be brief.", [], "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nShorter [/INST]"),
        (
            "llama-2-chat", "Be brief.", POEM,
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWrite a poem. [/INST] Roses are red. </s><s>[INST] Shorter [/INST]",
        ),
        ("none", None, POEM, "Write a poem.\n Roses are red.\n\n\nShorter"),
    ],
)  # fmt: skip
def test_shipped_templates_render_as_fastchat(name, system, history, expected):
    tokenizer = make_tokenizer()
    assert chat.load(name, tokenizer, system).render(tokenizer, "Shorter", history) == expected


def bos_tokenizer():
    """The tiny tokenizer (with its chat template), adding a BOS as Llama's does."""
    tokenizer = make_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return tokenizer


def test_one_bos(tmp_path):
    tokenizer = bos_tokenizer()
    bos = tokenizer.bos_token_id
    own_bos = tmp_path / "own-bos.jinja"
    own_bos.write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    for choice in ("vicuna_v1.1", "llama-2-chat", "none", str(own_bos)):
        ids = chat.load(choice, tokenizer).encode(tokenizer, "Shorter", POEM)
        assert ids[0] == bos and ids[1] != bos, choice
    # vicuna: the tokenizer's BOS, then the text as FastChat's `tokenizer([prompt])` encodes it ("</s>" special)
    text = chat.load("vicuna_v1.1", tokenizer).render(tokenizer, "Shorter", POEM)
    assert chat.load("vicuna_v1.1", tokenizer).encode(tokenizer, "Shorter", POEM) == tokenizer([text]).input_ids[0]
    # hf: exactly what transformers' apply_chat_template gives (the template decides about BOS; this one has none)
    messages = [{"role": "user", "content": "Shorter"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert chat.load("hf", tokenizer).encode(tokenizer, "Shorter") == list(expected)


def test_load_names_and_errors(tmp_path):
    tokenizer = make_tokenizer()
    own = chat.load("hf", tokenizer)
    assert own.describe() == {
        "name": "hf",
        "sha256": hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest(),
        "system_prompt": None,
    }
    assert chat.load("hf", make_tokenizer(chat=False)).describe()["name"] == "none"  # no template: plain text
    shipped = chat.TEMPLATE_DIR / "vicuna_v1.1.jinja"
    assert chat.load("vicuna_v1.1", tokenizer).sha256 == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert set(chat.shipped()) >= {"vicuna_v1.1", "llama-2-chat"}
    copy = tmp_path / "mine.jinja"
    copy.write_text(shipped.read_text())
    assert chat.load(str(copy), tokenizer).name == "mine.jinja" == chat.label(str(copy))
    with pytest.raises(BenchError, match="unknown chat template 'nope'; choose hf, none, .*llama-2-chat"):
        chat.load("nope", tokenizer)
    with pytest.raises(BenchError, match="does not exist"):
        chat.check(str(tmp_path / "missing.jinja"))
    with pytest.raises(BenchError, match="--chat-template none sends plain text"):
        chat.check("none", "Be brief.")
    with pytest.raises(BenchError, match="the tokenizer has no chat template"):
        chat.load("hf", make_tokenizer(chat=False), "Be brief.")
    failing = tmp_path / "failing.jinja"
    failing.write_text("{{ raise_exception('no system messages here') }}")
    with pytest.raises(BenchError, match="chat template failing.jinja: no system messages here"):
        chat.load(str(failing), tokenizer).render(tokenizer, "Hi")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "mtbench", "--chat-template", "nope"], "unknown chat template 'nope'"),
        (["--task", "mtbench", "--chat-template", "none", "--system-prompt", "x"], "sends plain text"),
        (["--task", "humaneval", "--chat-template", "vicuna_v1.1"], "task humaneval sends raw prompts"),
        (["--task", "cnndm", "--subset", "all"], "--subset must be one of specbench80, test"),
    ],
)
def test_bad_prompt_flags(monkeypatch, capsys, data_dir, args, message):
    code, _, err = bench(monkeypatch, capsys, "run", "--method", "ar", *args, "--data-dir", str(data_dir))
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


QUESTIONS = {"81": "Write a poem about the sea.", "82": "def add(a, b): return"}  # conftest's data_dir


def config(tiny_dir, data_dir, out, **kw) -> RunConfig:
    base = dict(method="pld", task="mtbench", model=str(tiny_dir), data_dir=str(data_dir), out=str(out), limit=2)
    return RunConfig(**(base | {"max_new_tokens": 6, "warmup": 0} | kw))


def test_run_records_prompts_template_and_data(tiny_dir, tiny, data_dir, tmp_path):
    out = tmp_path / "r"
    run(config(tiny_dir, data_dir, out, chat_template="vicuna_v1.1", system_prompt="Be brief."), progress=False)
    records = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    assert len(records) == 8  # 2 questions x 2 turns x (baseline, method)
    template = chat.load("vicuna_v1.1", tiny.tokenizer, "Be brief.")
    by_key = {(r["role"], r["prompt_id"]): r for r in records}
    for (role, _), r in by_key.items():
        question = QUESTIONS[r["sample_id"]]
        assert r["prompt_tokens"] == len(r["prompt_ids"])
        assert tiny.tokenizer.decode(r["prompt_ids"]).startswith(f"Be brief. USER: {question} ASSISTANT:")
        if r["turn"] == 1:
            assert r["prompt_ids"] == template.encode(tiny.tokenizer, question)
        else:  # the second turn holds this lane's own first answer
            history = [(question, by_key[(role, r["sample_id"])]["text"])]
            assert r["prompt_ids"] == template.encode(tiny.tokenizer, "Now say it shorter.", history)
    text = (out / MANIFEST).read_text()
    manifest = json.loads(text)["config"]
    assert manifest["chat_template"] == "vicuna_v1.1" and manifest["system_prompt"] == "Be brief."
    assert manifest["prompt_template"] == template.describe() and len(manifest["prompt_template"]["sha256"]) == 64
    data = data_dir / "mt_bench" / "question.jsonl"
    assert manifest["task_data"] == [
        {
            "source": "mtbench",
            "file": "mt_bench/question.jsonl",
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        }
    ]
    assert str(data_dir) not in text
    with pytest.raises(BenchError, match="different config.*chat_template"):
        run(config(tiny_dir, data_dir, out, chat_template="llama-2-chat", system_prompt="Be brief."), progress=False)
    with pytest.raises(BenchError, match="different config.*system_prompt"):
        run(config(tiny_dir, data_dir, out, chat_template="vicuna_v1.1"), progress=False)


def test_default_template_and_report(tiny_dir, data_dir, tmp_path):
    from bench.report import load_run, run_rows

    out = tmp_path / "r"
    run(config(tiny_dir, data_dir, out, method="ar", limit=1, turns=1), progress=False)
    manifest = json.loads((out / MANIFEST).read_text())["config"]
    assert manifest["chat_template"] == "hf" and manifest["prompt_template"]["name"] == "hf"
    assert run_rows(load_run(out))  # the report reads runs whose records hold prompt ids


def test_sweep_keys(tmp_path, tiny_dir):
    path = tmp_path / "s.yaml"
    path.write_text(
        f"models: [{tiny_dir}]\nchat_template: vicuna_v1.1\nlimit: 1\nmethods: [pld]\n"
        "tasks: [gsm8k, {name: mtbench, chat_template: llama-2-chat, system_prompt: Be brief.}]\n"
    )
    got = {c.config.task: (c.config.chat_template, c.config.system_prompt) for c in cells(load_config(path), tmp_path)}
    assert got == {"gsm8k": ("vicuna_v1.1", None), "mtbench": ("llama-2-chat", "Be brief.")}
    path.write_text(f"models: [{tiny_dir}]\nchat_template: nope\nmethods: [pld]\ntasks: [mtbench]\n")
    with pytest.raises(BenchError, match="unknown chat template 'nope'"):
        cells(load_config(path), tmp_path)


def test_configs_name_their_template_and_subset():
    root = Path(__file__).resolve().parent.parent / "results" / "configs"
    assert load_config(root / "spec-bench.yaml")["chat_template"] == "vicuna_v1.1"  # Spec-Bench prompts Vicuna so
    assert {"name": "mtbench", "chat_template": "llama-2-chat"} in load_config(root / "lookahead.yaml")["tasks"]
    assert {"name": "cnndm", "subset": "specbench80"} in load_config(root / "cpu.yaml")["tasks"]


# --- cnndm subsets -------------------------------------------------------------------------------------------------

ARTICLES = [{"id": f"a{i}", "article": f"Article {i}.", "highlights": f"Point {i}."} for i in range(3)]


@pytest.fixture
def cnn(tmp_path) -> Path:
    folder = tmp_path / "cnn_dailymail"
    folder.mkdir()
    for name, rows in (("test_specbench80.jsonl", ARTICLES[:2]), ("test.jsonl", ARTICLES)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_cnndm_subsets_local(cnn):
    assert [s.id for s in CNNDailyMail(cnn).load()] == ["a0", "a1"]  # default: Spec-Bench's 80
    assert [s.id for s in CNNDailyMail(cnn, CNNDailyMailOptions(subset="test")).load()] == ["a0", "a1", "a2"]
    assert TASKS.get("cnndm").Options().subset == "specbench80"
    (cnn / "cnn_dailymail" / "test.jsonl").unlink()
    with pytest.raises(BenchError, match="test.jsonl does not exist .*abisee/cnn_dailymail 3.0.0 test"):
        CNNDailyMail(cnn, CNNDailyMailOptions(subset="test")).load()


def test_cnndm_subsets_hub(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(BenchError, match="not on the hub; .*--subset test"):
        CNNDailyMail().load()
    asked = []

    class Builder:
        hash = "0123456789abcdef0123456789abcdef01234567"

        def download_and_prepare(self) -> None:
            pass

        def as_dataset(self, split: str) -> list[dict]:
            return [dict(r, extra=1) for r in ARTICLES]

    def builder(path, name):
        asked.append((path, name))
        return Builder()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset_builder=builder))
    samples, read = CNNDailyMail(None, CNNDailyMailOptions(subset="test")).load_traced(limit=2)
    assert [s.id for s in samples] == ["a0", "a1"] and asked == [("abisee/cnn_dailymail", "3.0.0")]
    assert read == [
        {"source": "cnndm-test", "hub": "abisee/cnn_dailymail", "config": "3.0.0", "split": "test",
         "revision": Builder.hash},
    ]  # fmt: skip


def test_tracing_records_each_source_once(cnn):
    with tracing() as read:
        load_rows("cnndm-test", cnn, 1)
        load_rows("cnndm-test", cnn)
        load_rows("cnndm-specbench80", cnn)
    assert [r["source"] for r in read] == ["cnndm-test", "cnndm-specbench80"]
    assert all(r["file"].startswith("cnn_dailymail/") for r in read)


def test_training_refuses_the_evaluation_subsets(cnn):
    from bench.train import TrainConfig, training_samples

    for split in ("specbench80", "test"):
        with pytest.raises(BenchError, match=f"{split} is the cnndm evaluation split"):
            training_samples(TrainConfig("slm", "x", "cnndm", "out", train_split=split, data_dir=str(cnn)))
