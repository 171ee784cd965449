"""REST: the datastore build (library and CLI), the reference's trie rules, losslessness, exact sampling, drafting
that really happens, and the refusals (no datastore, another tokenizer, a changed datastore)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.datastore import build, write_datastore
from core.errors import BenchError
from core.models import LoadedModel
from core.timing import Timer
from methods.ar import Autoregressive
from methods.base import METHODS
from methods.decode import Sampler, StopRule, verify_loop
from methods.rest import TOKENS, Datastore, RestDrafter, trie
from tests.conftest import CORPUS, make_model
from tests.test_cli import bench
from tests.test_methods import (
    PROMPTS,
    VOCAB,
    NoTokenizer,
    assert_equals_ar,
    chi_square_rejects,
    empirical,
    exact_distribution,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and never stall on a busy machine's second core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_trie(rows: np.ndarray, choices: int, max_depth: int) -> tuple[list[int], list[int]]:
    """DraftRetriever's `search` after the lookup, written plainly: count every prefix of the continuations, keep
    the `choices` heaviest, `cut_to_choices`, then the trie of what is left (ties: shallower, then earlier row)."""
    count: dict[tuple[int, ...], int] = {}
    first: dict[tuple[int, ...], int] = {}
    for i, row in enumerate(rows.tolist()):
        row = [t for t in row if t >= 0]
        for j in range(len(row)):
            count[tuple(row[: j + 1])] = count.get(tuple(row[: j + 1]), 0) + 1
            first.setdefault(tuple(row[: j + 1]), i)
    ranked = sorted(count, key=lambda p: (-count[p], len(p), first[p]))[:choices]
    distinct = {p: len(set(p)) for p in ranked}
    total = sum(distinct.values())
    for p in sorted(ranked, key=lambda p: (-distinct[p], -ranked.index(p))):
        if total <= choices:
            break
        total -= distinct.pop(p)
    kept = sorted((p for p in distinct if len(p) <= max_depth), key=lambda p: (len(p), ranked.index(p)))
    return [p[-1] for p in kept], [kept.index(p[:-1]) if len(p) > 1 else -1 for p in kept]


def test_trie_follows_the_reference_counting():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, length, vocab = int(rng.integers(1, 30)), int(rng.integers(1, 7)), int(rng.integers(1, 5))
        ends = rng.integers(1, length + 1, n) if rng.random() < 0.3 else np.full(n, length)
        rows = sorted(rng.integers(0, vocab, (n, length))[i, : ends[i]].tolist() for i in range(n))
        padded = np.array([r + [-1] * (length - len(r)) for r in rows])  # suffix-array order, -1 past the end
        choices, depth = int(rng.integers(1, 25)), int(rng.integers(1, 8))
        tokens, parents = trie(padded, choices, depth)
        assert (tokens, parents) == reference_trie(padded, choices, depth)
        assert len(tokens) <= choices and all(p < i for i, p in enumerate(parents))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("corpus")
    (root / "text.txt").write_text("\n\n".join(CORPUS * 2))
    (root / "rows.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    return [root / "text.txt", root / "rows.jsonl"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_dir, corpus) -> Path:
    out = tmp_path_factory.mktemp("store") / "ds"
    build(str(tiny_dir), corpus, out, echo=lambda _: None)
    return out


def test_build_records_sources_and_tokenizer(store, corpus, tiny):
    record = json.loads((store / "datastore.json").read_text())
    assert record["tokenizer"]["vocab_size"] == len(tiny.tokenizer)
    assert [s["field"] for s in record["sources"]] == [None, "text"]
    assert all(len(s["sha256"]) == 64 and s["tokens"] > 0 for s in record["sources"])
    stream = np.load(store / TOKENS).tolist()
    assert record["tokens"] == sum(s["tokens"] for s in record["sources"]) == len(stream)
    first = record["sources"][0]["tokens"]  # the text file's paragraphs keep their blank lines: its text, exactly
    assert tiny.tokenizer.decode(stream[:first]) == corpus[0].read_text()
    assert tiny.tokenizer.decode(stream[first:]) == "".join(CORPUS)  # jsonl records, no separator (as the reference)
    assert Datastore(store).manifest()["sha256"] == record["files"][TOKENS]


def rest(tiny, store, sampler=None, **options):
    return METHODS.get("rest").create(tiny, sampler, {"datastore": str(store), **options})


@pytest.mark.parametrize("options", [{}, {"num_draft": 4, "max_token_span": 3}, {"num_draft": 64, "continuation": 3}])
@pytest.mark.parametrize("max_new", [1, 2, 7, 40])
def test_lossless_equals_ar(tiny, store, options, max_new):
    assert_equals_ar(rest(tiny, store, **options), tiny, [*PROMPTS, CORPUS[0][:60]], max_new, f"rest {options}")


def test_drafts_are_trees_from_the_datastore(tiny, store):
    drafter = rest(tiny, store).drafter()
    ids = tiny.tokenizer("the quick brown fox jumps over the lazy")["input_ids"]
    draft = drafter.propose(ids, 100)
    assert draft is not None and 1 <= len(draft.tokens) <= 16 and len(draft.paths) >= 1
    stream = np.load(store / TOKENS).tolist()
    for path in draft.paths:  # every path is a continuation of a context suffix somewhere in the stream
        chain = ids[-2:] + [draft.tokens[i] for i in path]
        assert any(stream[i : i + len(chain)] == chain for i in range(len(stream)))
    assert drafter.propose(ids, 1) is not None and max(map(len, drafter.propose(ids, 1).paths)) == 1
    absent = min(set(range(len(tiny.tokenizer))) - set(stream))
    assert drafter.propose([absent] * 3, 100) is None  # no match: an autoregressive step


def test_drafting_happens_on_text_the_datastore_holds(tiny, tmp_path):
    """A datastore holding the target's own greedy continuation: most of it is accepted (tau well above 1)."""
    ids = tiny.tokenizer(PROMPTS[2])["input_ids"]
    free = Autoregressive(tiny, None).generate(ids, StopRule(40), Timer()).tokens
    noise = np.arange(3, 60)
    write_datastore(tmp_path / "own", np.concatenate([noise, ids, free, noise]), tiny.tokenizer, {"model": "tiny"})
    method = rest(tiny, tmp_path / "own")
    got = method.generate(ids, StopRule(40), Timer())
    assert got.tokens == free
    assert len(got.tokens) / got.target_forwards > 4 and max(got.accepted) >= 6
    eos = free[12]  # an end token inside an accepted block ends the text there
    stopped = method.generate(ids, StopRule(40, frozenset({eos})), Timer())
    assert stopped.tokens == free[: free.index(eos) + 1] and sum(stopped.accepted) == len(stopped.tokens)


def test_sampling_matches_target_distribution(tmp_path):
    """Rejection sampling over the retrieved trie keeps the target's distribution exactly."""
    target = make_model(VOCAB, seed=3, layers=1, eos=None)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.3)
    sampler = Sampler(temperature=1.0, seed=0)
    prompt, steps, n = [1, 2, 3], 3, 3000
    stream = np.array([1, 2, 3, 0, 4, 1, 2, 3, 0, 1, 2, 3, 4, 4, 2, 3, 1, 0, 2, 3, 0, 4, 2])
    write_datastore(tmp_path / "ds", stream, NoTokenizer(), {"model": "small"})
    store = Datastore(tmp_path / "ds")
    draft = RestDrafter(store, 8, 16, 3, 5000).propose(prompt, steps)
    assert draft is not None and len(draft.paths) > 1  # a real tree is verified
    exact = exact_distribution(target, prompt, steps, sampler)
    got = empirical(lambda: RestDrafter(store, 8, 16, 3, 5000), target, prompt, steps, sampler, n)
    assert not chi_square_rejects(got, exact, n)
    result = verify_loop(target, prompt, StopRule(steps), Timer(), RestDrafter(store, 8, 16, 3, 5000), sampler)
    assert max(result.drafted) > 1


class OtherVocab(NoTokenizer):
    """As many tokens as the tiny tokenizer, other ids."""

    def __init__(self, size: int) -> None:
        self.size = size

    def get_vocab(self):
        return {f"t{i}": i for i in range(self.size)}

    def __len__(self):
        return self.size


def test_refusals(tiny, store, tmp_path):
    with pytest.raises(BenchError, match="rest needs --datastore DIR; build one: bench datastore build"):
        METHODS.get("rest").create(tiny, None, {})
    with pytest.raises(BenchError, match="is not a REST datastore"):
        rest(tiny, tmp_path)
    for other in (OtherVocab(len(tiny.tokenizer)), OtherVocab(VOCAB)):
        with pytest.raises(BenchError, match="was built with the tokenizer of .* rebuild it with --model tiny"):
            rest(LoadedModel(tiny.model, other, {"spec": "tiny"}), store)
    changed = tmp_path / "changed"
    write_datastore(changed, np.arange(10), tiny.tokenizer, {"model": "tiny"})
    np.save(changed / TOKENS, np.arange(11, dtype=np.uint32))
    with pytest.raises(BenchError, match="tokens.npy is missing or changed since it was built"):
        rest(tiny, changed)


def test_cli_builds_a_datastore(monkeypatch, capsys, tmp_path, tiny_dir, corpus):
    out = tmp_path / "ds"
    args = ["datastore", "build", "--model", str(tiny_dir), "--from", str(corpus[0]), "--from", str(corpus[1])]
    code, stdout, _ = bench(monkeypatch, capsys, *args, "--out", str(out), "--max-tokens", "50")
    assert code == 0 and f"datastore: {out} (50 tokens from 1 of 2 source files" in stdout
    record = json.loads((out / "datastore.json").read_text())
    assert record["truncated"] and record["tokens"] == 50 and record["max_tokens"] == 50


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "MISSING"], "source MISSING does not exist"),
        (["--from", "ROWS", "--field", "nope"], "line 1 lacks field(s) nope"),
        (["--from", "IDS"], "no text/content/en field; give --field (text fields: src)"),
        (["--from", "TEXT", "--model", "no-such-model"], "'no-such-model' is neither a preset"),
        (["--from", "TEXT", "--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--from", "TEXT", "--out", "STORE"], "already holds a datastore"),
    ],
)
def test_cli_bad_input(monkeypatch, capsys, tmp_path, tiny_dir, corpus, store, args, message):
    (tmp_path / "ids.jsonl").write_text(json.dumps({"id": 1, "src": "x"}) + "\n")
    paths = {"MISSING": str(tmp_path / "missing.txt"), "ROWS": str(corpus[1]), "IDS": str(tmp_path / "ids.jsonl"),
             "TEXT": str(corpus[0]), "STORE": str(store)}  # fmt: skip
    args = [paths.get(a, a) for a in args]
    defaults = [] if "--model" in args else ["--model", str(tiny_dir)]
    defaults += [] if "--out" in args else ["--out", str(tmp_path / "out")]
    code, _, err = bench(monkeypatch, capsys, "datastore", "build", *defaults, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("MISSING", paths["MISSING"]) in err


def test_a_sweep_records_the_datastore_and_shares_its_baseline(tmp_path, tiny_dir, data_dir, store):
    from bench.sweep import run_sweep

    config = {"name": "rest", "models": [str(tiny_dir)], "data_dir": str(data_dir), "limit": 2, "turns": 1,
              "warmup": 0, "max_new_tokens": 8, "tasks": ["mtbench"],
              "methods": ["pld", {"method": "rest", "settings": [{"datastore": str(store)}]}]}  # fmt: skip
    path = tmp_path / "rest.yaml"
    path.write_text(json.dumps(config))
    status = run_sweep(path, tmp_path / "out", echo=lambda _: None)
    assert all(c["status"] == "done" for c in status["cells"].values()), status
    cells = next((tmp_path / "out" / "mtbench").iterdir())
    manifests = {p.name: json.loads((p / "manifest.json").read_text())["config"] for p in cells.iterdir()}
    rest_cell = next(name for name in manifests if name.startswith("rest"))
    assert manifests[rest_cell]["method_manifest"]["datastore"]["sha256"] == Datastore(store).manifest()["sha256"]
    assert "method_manifest" not in manifests["ar"] and "method_manifest" not in manifests["pld"]
