"""`wmt`: WMT newstest German→English translation, scored with sacreBLEU corpus BLEU and chrF.

Prompt: Spec-Bench's wording (`TEMPLATE`) through the chat template where the tokenizer has one.
No stop strings: the plain prompt ends mid-line after the source, so a base model's translation usually starts
after a newline (and chat models may open with a preamble line); a "\\n" stop would end those generations empty.
Spec-Bench uses none either. Scoring instead keeps the first non-empty line of each output, whitespace-trimmed.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from bench.errors import BenchError
from tasks.base import Sample, Task, read_jsonl, register

TEMPLATE = "Translate German to English: {src}"  # Spec-Bench's translation prompt
YEARS = (2014, 2016)


@register
class WMT(Task):
    name = "wmt"
    description = "WMT newstest2014 German→English (3003 lines), sacreBLEU BLEU and chrF"

    def __init__(self, data_dir: str | Path | None = None, split: str | None = None) -> None:
        """`split`: the test set, "newstest2014" (default) or "newstest2016" (the year alone also works)."""
        super().__init__(data_dir)
        name = (split or "2014").removeprefix("newstest")
        if not name.isdigit():
            raise BenchError(f"unknown wmt split {split!r}; available: newstest2014, newstest2016")
        self.year = int(name)
        _check_year(self.year)

    def load(self, limit: int | None = None) -> list[Sample]:
        rows = load_pairs(self.data_dir, self.year, limit)
        return [Sample(r["id"], TEMPLATE.format(src=r["src"]), reference=r["ref"]) for r in rows]

    def score(self, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """Corpus BLEU (13a, case-sensitive) and chrF of the outputs' first non-empty lines vs. raw references."""
        import sacrebleu

        if not samples:
            return {}
        hypotheses = [first_line(output) for _, output in zip(samples, outputs, strict=True)]
        references = [[s.reference for s in samples]]
        return {
            "bleu": sacrebleu.corpus_bleu(hypotheses, references).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, references).score,
        }


def first_line(text: str) -> str:
    """The first non-empty line of `text`, whitespace-trimmed ("" when there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def load_pairs(data_dir: Path | None, year: int, limit: int | None = None) -> list[dict[str, str]]:
    """newstest`year` de→en as records {"id", "src", "ref"}: from `data_dir`/wmt_de_en, else the hub."""
    _check_year(year)
    if data_dir is not None:
        rows = read_jsonl(Path(data_dir) / "wmt_de_en" / f"newstest{year}.de-en.jsonl", ("id", "src", "ref"), limit)
        return [{"id": str(r["id"]), "src": r["src"], "ref": r["ref"]} for r in rows]
    return _from_hub(year, limit)


def _check_year(year: int) -> None:
    if year not in YEARS:
        raise BenchError(f"no newstest{year} de-en; available years: {', '.join(map(str, YEARS))}")


def _from_hub(year: int, limit: int | None) -> list[dict[str, str]]:
    """Streamed, so the multi-GB training split of the hub dataset is never downloaded."""
    hub_id = f"wmt/wmt{year % 100}"
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_id, "de-en", split="test", streaming=True)
        return [
            {"id": str(i), "src": r["translation"]["de"], "ref": r["translation"]["en"]}
            for i, r in enumerate(islice(ds, limit))
        ]
    except Exception as exc:
        raise BenchError(f"could not load {hub_id} de-en from the hub ({type(exc).__name__}); pass --data-dir") from exc
