"""`gsm8k`: GSM8K grade-school math (test, 1319 problems), exact match of the final number.

Prompt: the bare question (as in Spec-Bench) through the chat template where the tokenizer has one; no stop strings.
Answer extraction: the reference is the number after "####"; the prediction is the last number in the output
(`last_number`). The two are compared as decimals, so "18.00" equals "18".
"""

from __future__ import annotations

import re
from decimal import Decimal
from itertools import islice

from bench.errors import BenchError
from tasks.base import Sample, Task, read_jsonl, register

# An optional minus (not when it joins two words or numbers, as in "3-5"), digits with optional
# thousands groups ("1,234"), optional decimals ("18.00"; a sentence-ending "." is not taken).
NUMBER = re.compile(r"(?:(?<![\w-])-)?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?")


@register
class GSM8K(Task):
    name = "gsm8k"
    description = "GSM8K math word problems (test, 1319), bare question, final-number accuracy"

    def load(self, limit: int | None = None) -> list[Sample]:
        if self.data_dir is not None:
            path = self.data_dir / "gsm8k" / "test.jsonl"
            rows, source = read_jsonl(path, ("question", "answer"), limit), str(path)
        else:
            rows, source = _from_hub(limit), "openai/gsm8k"
        return [
            Sample(str(i), r["question"], reference=_final_answer(r["answer"], source, i)) for i, r in enumerate(rows)
        ]

    def score(self, samples: list[Sample], outputs: list[str]) -> dict[str, float]:
        """Accuracy in percent: the output's last number equals the reference number."""
        if not samples:
            return {}
        correct = sum(_matches(output, s.reference) for s, output in zip(samples, outputs, strict=True))
        return {"accuracy": 100 * correct / len(samples)}


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


def _from_hub(limit: int | None) -> list[dict]:
    try:
        from datasets import load_dataset

        ds = load_dataset("openai/gsm8k", "main", split="test")
    except Exception as exc:
        raise BenchError(
            f"could not load openai/gsm8k main from the hub ({type(exc).__name__}); pass --data-dir"
        ) from exc
    return [{"question": r["question"], "answer": r["answer"]} for r in islice(ds, limit)]
