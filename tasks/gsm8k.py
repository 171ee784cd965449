"""`gsm8k`: GSM8K grade-school math (test, 1319 problems), exact match of the final number.

Prompt: the bare question (as in Spec-Bench) through the chat template where the tokenizer has one; no stop strings.
Answer extraction: the reference is the number after "####"; the prediction is the last number in the output
(`last_number`). The two are compared as decimals, so "18.00" equals "18".
"""

from __future__ import annotations

import re
from decimal import Decimal

from core.errors import BenchError
from core.metrics import Metric
from tasks.base import Sample, Task, register
from tasks.sources import SOURCES, load_rows

# An optional minus (not when it joins two words or numbers, as in "3-5"), digits with optional
# thousands groups ("1,234"), optional decimals ("18.00"; a sentence-ending "." is not taken).
NUMBER = re.compile(r"(?:(?<![\w-])-)?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?")


@register
class GSM8K(Task):
    name = "gsm8k"
    description = "GSM8K math word problems (test, 1319), bare question, final-number accuracy"
    metrics = (Metric("accuracy", "percent of outputs whose last number equals the reference answer"),)

    def load(self, limit: int | None = None) -> list[Sample]:
        rows = load_rows(self.name, self.data_dir, limit)
        source = str(self.data_dir / SOURCES[self.name].local) if self.data_dir else SOURCES[self.name].hub
        return [
            Sample(str(i), r["question"], reference=_final_answer(r["answer"], source, i)) for i, r in enumerate(rows)
        ]

    def score_sample(self, sample: Sample, output: str) -> dict[str, float]:
        """100 when the output's last number equals the reference number, else 0."""
        return {"accuracy": 100.0 * _matches(output, sample.reference)}


def last_number(text: str) -> str | None:
    """The last number in `text` with "$" signs and thousands commas removed ("-$1,234.50" → "-1234.50")."""
    found = NUMBER.findall(text.replace("$", ""))
    return found[-1].replace(",", "") if found else None


def _matches(output: str, reference: str) -> bool:
    predicted = last_number(output)
    return predicted is not None and Decimal(predicted) == Decimal(reference)


def _final_answer(answer: str, source: str, index: int) -> str:
    """The number on the "#### <number>" line of a reference solution."""
    _, marker, final = answer.rpartition("####")
    number = last_number(final) if marker else None
    if number is None:
        raise BenchError(f"{source}: record {index} has no final '#### <number>' answer")
    return number
