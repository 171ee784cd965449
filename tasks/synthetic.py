"""`synthetic`: prompts of exactly `--prompt-tokens L` tokens, for context-length sweeps (speed against prompt
length, as in the tables of Zhou et al. 2024, "A Survey on Efficient Inference for Large Language Models").

The corpus is the English side of WMT newstest2015-2019 (`tasks.fixed_text.corpus_lines`: 13,170 lines of news,
documents in order) rather than TinyStories: it is real, varied prose of the kind the other tasks prompt with; it
is long enough (340k tokens for smollm2; 260k after the 16th start) that no sweep length wraps around; it comes
through the WMT loader, so it reads from the data folder or the hub and every file's sha256 goes into the manifest
(`load_traced`); and it stays clear of newstest2014, the evaluation year (the perplexity text).

Sample i starts at corpus line i * STRIDE (so the first N samples are the same whatever `--samples` is); its
prompt is the first L ids of the tokenizer's encoding of the lines from there, one per line (with the
tokenizer's BOS when it adds one, counted in L), more lines appended, wrapping at the end of the corpus, until
the encoding is longer than L. Raw text, no chat template, so the record's `prompt_tokens` is exactly L; the cut
falls mid-sentence, which a model continues. Speed only: no quality metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.options import option
from tasks.base import Sample, Task, TaskOptions, register
from tasks.fixed_text import corpus_lines

STRIDE = 200  # corpus lines between the starts of consecutive samples (a new news story, mostly)
CHARS_PER_TOKEN = 8  # the first text tried for L tokens has 8L characters (English BPE averages about 4)


@dataclass(frozen=True)
class SyntheticOptions(TaskOptions):
    prompt_tokens: int = option(128, "synthetic: prompt length in tokens (exact for any tokenizer)", min=1, label="L")
    samples: int = option(16, f"synthetic: number of prompts (sample i starts at corpus line {STRIDE}i)", min=1)


@register
class Synthetic(Task):
    name = "synthetic"
    description = (
        "Synthetic prompts of exactly --prompt-tokens L tokens cut from WMT newstest2015-2019 English text, raw (no "
        "chat template), for context-length sweeps (Zhou et al. 2024, A Survey on Efficient Inference for LLMs); "
        "speed only"
    )
    Options = SyntheticOptions
    chat_prompts = False  # raw text: the prompt is exactly L ids
    _lines: list[str] | None = None

    def corpus(self) -> list[str]:
        """The corpus lines (read once per task)."""
        if self._lines is None:
            self._lines = corpus_lines(self.data_dir)
        return self._lines

    def load(self, limit: int | None = None) -> list[Sample]:
        """The first `limit` of `samples` prompts; each one's text is long enough for L tokens in most
        tokenizers (`prompt_ids` extends it when not)."""
        lines, count = self.corpus(), self.options.samples
        chars = CHARS_PER_TOKEN * self.options.prompt_tokens
        return [
            Sample(f"synthetic-{i}", self.text(i * STRIDE % len(lines), chars), meta={"line": i * STRIDE % len(lines)})
            for i in range(count if limit is None else min(limit, count))
        ]

    def text(self, start: int, chars: int) -> str:
        """The corpus lines from line `start` on (wrapping), joined by newlines, until at least `chars` characters."""
        lines = self.corpus()
        out, size, i = [], -1, start
        while size < chars:
            out.append(lines[i % len(lines)])
            size += len(out[-1]) + 1
            i += 1
        return "\n".join(out)

    def prompt_ids(self, sample: Sample, tokenizer: Any, history: list[tuple[str, str]] = ()) -> list[int]:
        """Exactly `prompt_tokens` ids: the start of the encoded sample text, lengthened until it is long enough."""
        length, text = self.options.prompt_tokens, sample.prompt
        ids = tokenizer(text, verbose=False)["input_ids"]
        while len(ids) <= length:  # "<=": a tokenizer's trailing special token (EOS) never ends the prompt
            text = self.text(sample.meta["line"], 2 * len(text))
            ids = tokenizer(text, verbose=False)["input_ids"]
        return list(ids[:length])
