"""`synthetic`: prompts of exactly L tokens for any tokenizer, different per sample, deterministic, cut from the
newstest2015-2019 English text (never 2014), raw text, L checked; and a run records prompt_tokens == L."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import processors

from bench.cli_run import option_parameters
from bench.runner import RunConfig, run
from bench.store import MANIFEST, SAMPLES
from core.errors import BenchError
from tasks.base import TASKS
from tasks.fixed_text import CORPUS_YEARS, corpus_lines
from tasks.synthetic import STRIDE, Synthetic, SyntheticOptions
from tests.conftest import REAL_DATA, make_tokenizer

WORDS = ("river", "mountain", "lantern", "harbor", "violet", "engine", "meadow", "copper", "whisper", "orchard",
         "signal", "thunder")  # fmt: skip
LENGTHS = (1, 7, 128, 600)


def year_rows(year: int, count: int) -> list[dict]:
    """`count` distinct English references (and dummy sources) of a fixture newstest year."""
    return [{"id": k, "src": "x", "ref": f"In {year} the {WORDS[k % 12]} {k} met the {WORDS[(k * 5) % 12]}."}
            for k in range(count)]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A data folder with 200 lines per training year (1000 in all: 5 samples start 200 lines apart) and a
    newstest2014 whose text must never appear in a prompt."""
    root = tmp_path_factory.mktemp("synthetic-data")
    (root / "wmt_de_en").mkdir()
    for year in (2014, *CORPUS_YEARS):
        rows = [{"id": 0, "src": "x", "ref": "EVALUATION ONLY"}] if year == 2014 else year_rows(year, 200)
        (root / "wmt_de_en" / f"newstest{year}.de-en.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def task(data_dir: Path, **options) -> Synthetic:
    return Synthetic(data_dir, SyntheticOptions.resolve(options, "synthetic"))


def test_registered_raw_and_a_run_flag():
    assert TASKS.get("synthetic") is Synthetic and Synthetic.metrics == () and not Synthetic.chat_prompts
    assert "Zhou et al. 2024" in Synthetic.description
    _, _, task_names = option_parameters()
    assert {"prompt_tokens", "samples"} <= task_names  # `bench run --prompt-tokens L --samples N`
    assert {s.name: s.label for s in SyntheticOptions.specs()}["prompt_tokens"] == "L"
    with pytest.raises(BenchError, match="raw prompts"):
        Synthetic.check_prompt_format("vicuna_v1.1", None)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_length_is_refused(bad):
    with pytest.raises(BenchError, match="--prompt-tokens must be at least 1"):
        SyntheticOptions.resolve({"prompt_tokens": bad}, "synthetic")


@pytest.mark.parametrize("length", LENGTHS)
def test_exactly_l_ids_for_every_sample(data, tok, length):
    t = task(data, prompt_tokens=length, samples=5)
    samples = t.load()
    prompts = [t.prompt_ids(s, tok) for s in samples]
    assert len(samples) == 5 and all(len(p) == length for p in prompts)
    assert all(
        tok.decode(p) == tok.decode(tok(s.prompt)["input_ids"][:length]) for p, s in zip(prompts, samples, strict=True)
    )
    if length > 1:
        assert len({tuple(p) for p in prompts}) == 5  # each sample starts elsewhere in the corpus


def test_samples_start_apart_and_stay_put(data, tok):
    lines = corpus_lines(data)
    samples = task(data, prompt_tokens=16, samples=4).load()
    assert [s.meta["line"] for s in samples] == [i * STRIDE % len(lines) for i in range(4)]
    assert all(s.prompt.startswith(lines[s.meta["line"]]) for s in samples)
    assert [(s.id, s.prompt) for s in task(data, prompt_tokens=16, samples=8).load(limit=4)] == [
        (s.id, s.prompt) for s in samples
    ]
    assert len(task(data, samples=3).load(limit=10)) == 3


def test_deterministic_and_longer_prompts_extend_shorter_ones(data, tok):
    first = [task(data, prompt_tokens=64).prompt_ids(s, tok) for s in task(data, prompt_tokens=64).load(3)]
    again = [task(data, prompt_tokens=64).prompt_ids(s, tok) for s in task(data, prompt_tokens=64).load(3)]
    longer = task(data, prompt_tokens=256)
    assert first == again
    assert [longer.prompt_ids(s, tok)[:64] for s in longer.load(3)] == first  # a sweep lengthens the same text


def test_short_text_is_continued_wrapping_the_corpus(data, tok):
    """A text far too short for L is lengthened with the following lines, past the corpus end and back to line 0."""
    t = task(data, prompt_tokens=8000, samples=5)
    sample = t.load()[4]
    sample.prompt = sample.prompt[:20]  # as if the tokenizer needed far more characters than the first guess
    ids = t.prompt_ids(sample, tok)
    assert len(ids) == 8000
    assert corpus_lines(data)[0] in tok.decode(ids)  # lines 800-999 (about 6k tokens), then line 0 on


def test_bos_counts_and_a_trailing_eos_never_ends_a_prompt(data):
    """A tokenizer that adds BOS and EOS: BOS is the first of the L ids; a text encoding to exactly L ids with its
    EOS last is lengthened, not sent with the EOS."""
    tok = make_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    t = task(data, prompt_tokens=7)
    sample = t.load(1)[0]
    sample.prompt = tok.decode(tok(sample.prompt, add_special_tokens=False)["input_ids"][:5])
    assert tok(sample.prompt)["input_ids"][-1] == eos and len(tok(sample.prompt)["input_ids"]) == 7
    ids = t.prompt_ids(sample, tok)
    assert len(ids) == 7 and ids[0] == bos and eos not in ids


def test_corpus_is_the_training_years_only(data):
    samples, read = task(data).load_traced()
    assert [r["file"] for r in read] == [f"wmt_de_en/newstest{y}.de-en.jsonl" for y in CORPUS_YEARS]
    assert all(len(r["sha256"]) == 64 for r in read)
    assert 2014 not in CORPUS_YEARS and not any("EVALUATION" in s.prompt for s in samples)


def test_run_records_exactly_l_prompt_tokens(tiny_dir, data, tmp_path, one_thread):
    out = tmp_path / "run"
    config = RunConfig(method="ar", task="synthetic", model=str(tiny_dir), data_dir=str(data), out=str(out), limit=2,
                       max_new_tokens=3, warmup=0, baseline=False, task_options={"prompt_tokens": 37})  # fmt: skip
    run(config, progress=False)
    records = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    assert len(records) == 2 and all(r["prompt_tokens"] == len(r["prompt_ids"]) == 37 for r in records)
    manifest = json.loads((out / MANIFEST).read_text())["config"]
    assert manifest["task_options"]["prompt_tokens"] == 37 and len(manifest["task_data"]) == len(CORPUS_YEARS)


@pytest.mark.skipif(not (REAL_DATA / "wmt_de_en").is_dir(), reason="needs the real WMT files")
@pytest.mark.parametrize("length", LENGTHS)
def test_real_corpus_exact_lengths(tok, length):
    t = task(REAL_DATA, prompt_tokens=length)
    assert len(t.corpus()) > 13000 and sum(map(len, t.corpus())) > 1_400_000  # no sweep length wraps around
    prompts = [t.prompt_ids(s, tok) for s in t.load()]
    assert len(prompts) == 16 and all(len(p) == length for p in prompts)


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_DATA / "wmt_de_en").is_dir(), reason="needs the real WMT files")
@pytest.mark.parametrize("length", LENGTHS)
def test_real_tokenizer_exact_lengths(length):
    from transformers import AutoTokenizer

    from core.models import fetch

    real = AutoTokenizer.from_pretrained(fetch("smollm2-135m"))
    t = task(REAL_DATA, prompt_tokens=length)
    assert all(len(t.prompt_ids(s, real)) == length for s in t.load())
