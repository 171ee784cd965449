"""Fixed English texts read through the WMT task's loader: the corpus that `synthetic` cuts its prompts from
(the references of newstest2015-2019, the training years) and the perplexity text (the first references of
newstest2014, the evaluation year: scored, never trained on)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from core.errors import BenchError
from tasks.base import resolve_data_dir
from tasks.sources import WMT_YEARS, tracing
from tasks.wmt import load_pairs

CORPUS_YEARS = tuple(y for y in WMT_YEARS if y != 2014)  # 2015-2019; 2014 is kept for evaluation
PERPLEXITY_YEAR = 2014


def corpus_lines(data_dir: Path | None) -> list[str]:
    """The English references of newstest2015-2019, in file order (documents stay in order, so the lines read as
    running news text); blank lines dropped."""
    lines = [row["ref"].strip() for year in CORPUS_YEARS for row in load_pairs(data_dir, year)]
    return [line for line in lines if line]


def perplexity_texts(data_dir: str | Path | None, n: int = 200) -> tuple[list[str], dict[str, Any]]:
    """The first `n` English references of newstest2014 de-en (from `data_dir`, else $DECODEBENCH_DATA, else the
    hub) and their identity for a run manifest: source, split, n, the sha256 of the texts joined by newlines, and
    the data file read (`tasks.sources.tracing`)."""
    if n < 1:
        raise BenchError(f"the perplexity text needs at least 1 reference (got n={n})")
    with tracing() as read:
        rows = load_pairs(resolve_data_dir(data_dir), PERPLEXITY_YEAR, n)
    if len(rows) < n:
        raise BenchError(f"newstest{PERPLEXITY_YEAR} has {len(rows)} references, fewer than the {n} asked for")
    texts = [row["ref"] for row in rows]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    identity = {"source": "wmt_de_en references (English)", "split": f"newstest{PERPLEXITY_YEAR}", "n": n,
                "sha256": digest, "read": read}  # fmt: skip
    return texts, identity
