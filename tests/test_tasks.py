"""wmt, gsm8k and specbench: loading from small fixture folders, errors, scorers, prompt encoding."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from core.errors import BenchError
from tasks.base import DATA_ENV, TASKS
from tasks.gsm8k import GSM8K, last_number
from tasks.specbench import CATEGORIES, GROUPS, SpecBench, SpecBenchOptions
from tasks.wmt import TEMPLATE, WMT, WMTOptions, first_line, load_pairs
from tests.conftest import REAL_DATA, make_tokenizer

WMT_ROWS = [
    {"id": 0, "src": "Der Hund schläft.", "ref": "The dog sleeps."},
    {"id": 1, "src": "Wir gehen nach Hause.", "ref": "We are going home."},
    {"id": 2, "src": "Das Wetter ist schön.", "ref": "The weather is nice."},
]
GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A car costs $1,200 more than 34. Price?", "answer": "34 + 1200 = 1234\n#### 1,234"},
    {"question": "It is 2 degrees and falls by 5. Now?", "answer": "2 - 5 = -3\n#### -3"},
]
SPEC_ROWS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem about the sea.", "Shorter."]},
    {"question_id": 82, "category": "coding", "turns": ["def add(a, b): return", "Add types."]},
    {"question_id": 83, "category": "translation", "turns": ["Translate German to English: Hallo", ""]},
    {"question_id": 84, "category": "writing", "turns": ["Compose a travel blog post about Hawaii.", "Again."]},
]


def write_jsonl(path: Path, rows: list, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "wmt_de_en" / "newstest2014.de-en.jsonl", WMT_ROWS)
    write_jsonl(tmp_path / "wmt_de_en" / "newstest2016.de-en.jsonl", [{"id": 7, "src": "Ja.", "ref": "Yes."}])
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM_ROWS)
    write_jsonl(tmp_path / "spec_bench" / "question.jsonl", SPEC_ROWS)
    return tmp_path


def test_registered():
    assert TASKS.get("wmt") is WMT and TASKS.get("gsm8k") is GSM8K and TASKS.get("specbench") is SpecBench


# --- loading -------------------------------------------------------------------------------------------------------


def test_wmt_load(data):
    samples = WMT(data).load(limit=2)
    assert [s.id for s in samples] == ["0", "1"]
    assert samples[0].prompt == "Translate German to English: Der Hund schläft."
    assert samples[1].reference == "We are going home."
    assert len(WMT(data).load()) == 3


def test_wmt_year_and_load_pairs(data):
    assert [(s.id, s.prompt) for s in WMT(data, WMTOptions(split="newstest2016")).load()] == [
        ("7", TEMPLATE.format(src="Ja."))
    ]
    assert load_pairs(data, 2016, None) == [{"id": "7", "src": "Ja.", "ref": "Yes."}]
    assert load_pairs(data, 2014, 1) == [{"id": "0", "src": "Der Hund schläft.", "ref": "The dog sleeps."}]
    with pytest.raises(BenchError, match="unknown wmt split '2013'.*newstest2019"):
        WMTOptions.resolve({"split": "2013"}, "wmt")
    with pytest.raises(BenchError, match=r"newstest2015\.de-en\.jsonl does not exist"):
        load_pairs(data, 2015, None)


def test_gsm8k_load(data):
    samples = GSM8K(data).load(limit=2)
    assert [s.id for s in samples] == ["0", "1"]
    assert samples[0].prompt == GSM_ROWS[0]["question"]  # bare question
    assert [s.reference for s in GSM8K(data).load()] == ["7", "1234", "-3"]


def test_gsm8k_answer_without_marker(tmp_path):
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "q", "answer": "the answer is 4"}])
    with pytest.raises(BenchError, match=r"test\.jsonl: record 0 .*####"):
        GSM8K(tmp_path).load()


def test_specbench_load(data):
    samples = SpecBench(data).load()
    assert [s.id for s in samples] == ["81", "82", "83", "84"]
    assert samples[1].prompt == "def add(a, b): return"  # first turn
    assert samples[1].meta["category"] == "mt_bench" and samples[1].meta["subcategory"] == "coding"  # its group
    assert [s.meta["category"] for s in samples] == ["mt_bench", "mt_bench", "translation", "mt_bench"]
    assert [s.id for s in SpecBench(data).load(limit=2)] == ["81", "82"]


def test_specbench_category_filter(data):
    assert [s.id for s in SpecBench(data, SpecBenchOptions(subset="writing")).load()] == ["81", "84"]
    assert [s.id for s in SpecBench(data, SpecBenchOptions(subset="writing")).load(limit=1)] == ["81"]
    assert SpecBench(data, SpecBenchOptions(subset="rag")).load() == []
    assert [s.id for s in SpecBench(data, SpecBenchOptions(subset="mt_bench")).load()] == ["81", "82", "84"]
    assert len(CATEGORIES) == 13 and len(GROUPS) == 6
    assert [s.id for s in SpecBench(data, SpecBenchOptions(per_group=1)).load()] == ["81", "83"]  # one per group
    assert [s.id for s in SpecBench(data, SpecBenchOptions(per_group=2)).load()] == ["81", "82", "83"]
    with pytest.raises(BenchError, match="--per-group must be at least 1"):
        SpecBenchOptions.resolve({"per_group": 0}, "specbench")


@pytest.mark.skipif(not (REAL_DATA / "spec_bench").is_dir(), reason="needs the real Spec-Bench question file")
def test_specbench_groups_are_spec_benchs_columns():
    """480 questions: MT-bench's 8 categories (80) form the mt_bench group, each other group has 80."""
    samples = SpecBench(REAL_DATA).load()
    assert Counter(s.meta["category"] for s in samples) == dict.fromkeys(GROUPS, 80)
    assert len(SpecBench(REAL_DATA, SpecBenchOptions(subset="mt_bench")).load()) == 80
    assert {s.meta["subcategory"] for s in samples if s.meta["category"] == "mt_bench"} == set(CATEGORIES[:8])


def test_specbench_unknown_category(data):
    message = "--subset must be one of mt_bench, translation.*rag, writing.*humanities .got 'poetry'"
    with pytest.raises(BenchError, match=message):
        SpecBenchOptions.resolve({"subset": "poetry"}, "specbench")


def test_specbench_needs_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(BenchError, match="--data-dir"):
        SpecBench().load()


@pytest.mark.parametrize(
    ("task", "relative", "rows", "missing"),
    [
        (WMT, "wmt_de_en/newstest2014.de-en.jsonl", WMT_ROWS, "ref"),
        (GSM8K, "gsm8k/test.jsonl", GSM_ROWS, "answer"),
        (SpecBench, "spec_bench/question.jsonl", SPEC_ROWS, "turns"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path, task, relative, rows, missing):
    path = tmp_path / relative
    with pytest.raises(BenchError, match=f"{path.name} does not exist"):
        task(tmp_path).load()
    write_jsonl(path, rows[:1], extra="{not json\n")
    with pytest.raises(BenchError, match=rf"{path.name}: line 2 is not valid JSON"):
        task(tmp_path).load()
    broken = {k: v for k, v in rows[1].items() if k != missing}
    write_jsonl(path, [rows[0], broken])
    with pytest.raises(BenchError, match=rf"{path.name}: line 2 lacks field\(s\) {missing}"):
        task(tmp_path).load()


# --- scoring -------------------------------------------------------------------------------------------------------


def test_first_line():
    assert first_line("  The dog sleeps. \nGerman: Der Hund") == "The dog sleeps."
    assert first_line("\n\n  Yes.\nmore") == "Yes."
    assert first_line(" \n ") == ""


def test_wmt_score_identical_and_empty(data):
    samples = WMT(data).load()
    refs = [s.reference for s in samples]
    assert WMT(data).score(samples, refs) == {"bleu": pytest.approx(100), "chrf": pytest.approx(100)}
    # Extra lines after the translation and surrounding whitespace are dropped before scoring.
    padded = [f"\n  {r}  \nNote: this was translated." for r in refs]
    assert WMT(data).score(samples, padded) == {"bleu": pytest.approx(100), "chrf": pytest.approx(100)}
    assert WMT(data).score(samples, ["", "", ""]) == {"bleu": 0.0, "chrf": 0.0}
    assert WMT(data).score([], []) == {}


def test_wmt_bleu_by_hand(tmp_path):
    write_jsonl(
        tmp_path / "wmt_de_en" / "newstest2014.de-en.jsonl", [{"id": 0, "src": "x", "ref": "the cat sat on a mat"}]
    )
    task = WMT(tmp_path)
    # Hypothesis "the cat sat on the mat" (6 words, as long as the reference: no brevity penalty).
    # Clipped n-gram precisions: 1-grams 5/6 (second "the" unmatched), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert task.score(task.load(), ["the cat sat on the mat"])["bleu"] == pytest.approx(expected, abs=1e-9)
    # Case-sensitive: the same words capitalised share no n-gram with the reference.
    assert task.score(task.load(), ["THE CAT SAT ON A MAT"])["bleu"] == 0.0


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("So she makes 18 dollars.", "18"),
        ("The answer is $18.00.", "18.00"),
        ("Total: $1,234.50", "1234.50"),
        ("3 + 4 = 7 and then 10", "10"),
        ("The temperature is -3 now", "-3"),
        ("She owes -$5", "-5"),
        ("between 3-5 people", "5"),
        ("items 1, 2, 3", "3"),
        ("1,000,000 grains", "1000000"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_gsm8k_score(data):
    samples = GSM8K(data).load()  # references 7, 1234, -3
    assert GSM8K(data).score(samples, ["7", "It costs $1,234.00.", "The answer is -3."]) == {"accuracy": 100.0}
    assert GSM8K(data).score(samples, ["", "no idea", "3"]) == {"accuracy": 0.0}
    # The last number counts, not the first: 1 of 3 correct.
    score = GSM8K(data).score(samples, ["7 apples, then 8", "1234", "minus 3"])
    assert score == {"accuracy": pytest.approx(100 / 3)}
    assert GSM8K(data).score([], []) == {}


def test_specbench_has_no_quality_score(data):
    samples = SpecBench(data).load()
    assert SpecBench(data).score(samples, ["x"] * len(samples)) == {}


# --- prompts -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize(
    ("task", "text"), [(WMT, "Der Hund schläft."), (GSM8K, "Tom has 3 apples"), (SpecBench, "sea")]
)
def test_prompt_ids(data, chat, task, text):
    tokenizer = make_tokenizer(chat=chat)
    instance = task(data)
    ids = instance.prompt_ids(instance.load(limit=1)[0], tokenizer)
    assert ids and text in tokenizer.decode(ids)
    assert ("<|user|>" in tokenizer.decode(ids)) == chat


# --- the real files ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="no shared data folder")
def test_real_files():
    for task in (
        WMT(REAL_DATA),
        WMT(REAL_DATA, WMTOptions(split="newstest2016")),
        GSM8K(REAL_DATA),
        SpecBench(REAL_DATA),
    ):
        samples = task.load(limit=3)
        assert len(samples) == 3 and len({s.id for s in samples}) == 3
    assert GSM8K(REAL_DATA).load(limit=1)[0].reference == "18"
    assert [s.id for s in SpecBench(REAL_DATA, SpecBenchOptions(subset="math_reasoning")).load(limit=3)] == [
        "401",
        "402",
        "403",
    ]
