"""`wmt`: WMT newstest German→English translation, scored with sacreBLEU corpus BLEU and chrF.

Prompt: Spec-Bench's wording (`TEMPLATE`) through the chat template where the tokenizer has one.
No stop strings: the plain prompt ends mid-line after the source, so a base model's translation usually starts
after a newline (and chat models may open with a preamble line); a "\\n" stop would end those generations empty.
Spec-Bench uses none either. Scoring instead keeps the first non-empty line of each output, whitespace-trimmed.
newstest2014 is the evaluation set; 2015-2019 are for training (`bench train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import BenchError
from core.metrics import Metric
from core.options import option
from tasks.base import Sample, Task, TaskOptions, register
from tasks.sources import WMT_YEARS, load_rows

TEMPLATE = "Translate German to English: {src}"  # Spec-Bench's translation prompt


@dataclass(frozen=True)
class WMTOptions(TaskOptions):
    split: str = option("newstest2014", f"wmt: the newstest year ({WMT_YEARS[0]}-{WMT_YEARS[-1]}; 2014 evaluates)")

    def check(self, owner: str) -> None:
        year(self.split)


def year(split: str) -> int:
    """The year of a split name ("newstest2016" or "2016"); an unknown one is a `BenchError`."""
    name = split.removeprefix("newstest")
    if not name.isdigit() or int(name) not in WMT_YEARS:
        raise BenchError(f"unknown wmt split {split!r}; available: {', '.join(f'newstest{y}' for y in WMT_YEARS)}")
    return int(name)


@register
class WMT(Task):
    name = "wmt"
    description = "WMT newstest2014 German→English (3003 lines), sacreBLEU BLEU and chrF"
    Options = WMTOptions
    metrics = (
        Metric("bleu", "sacreBLEU corpus BLEU (13a, case-sensitive) of the first output line", aggregate="corpus"),
        Metric("chrf", "sacreBLEU corpus chrF of the first output line", aggregate="corpus"),
    )

    @property
    def year(self) -> int:
        return year(self.options.split)

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
    rows = load_rows(f"wmt{year}", data_dir, limit)
    return [{"id": str(r["id"]), "src": r["src"], "ref": r["ref"]} for r in rows]
