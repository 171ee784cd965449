"""The data of `bench train medusa|eagle`: training prompts, the target's own greedy answers to them
(self-distillation), and the target's last hidden state at every position of every prompt + answer.

Default prompts: a seeded mix, in equal parts, of WMT newstest2015-2019 German sources (Spec-Bench's translation
prompt), GSM8K test questions outside Spec-Bench's math_reasoning 80 (bare, as the gsm8k task asks them) and the
first two sentences of TinyStories paragraphs ("Continue the story: ..."), from the data folder. Any prompt whose
text (letters and digits only, lower-cased) equals an evaluation sample's (Spec-Bench, MT-bench, HumanEval,
newstest2014) is dropped, and newstest2014 is never a source. `--data FILE.jsonl` replaces the mix: lines
{"prompt": str} or {"messages": [...]}, formatted as evaluation prompts are (the target's chat template, else plain
text), or {"text": str}, continued as it stands (no chat template: code completion, as the humaneval task prompts).

Answers are generated in batches (left padding, greedy, up to --answer-tokens, ending at EOS) and appended to
`distill.jsonl` after every batch, so an interrupted run resumes without regenerating. Features are computed once
per sequence (one right-padded batched forward of the target's decoder: its final norm applied) and kept on disk
in bf16 (half the disk of fp32; the reference stores fp16 features) by `bench.features.FeatureCache`, keyed by the
target artifact and the sequence's ids, so later runs on the same target and data reuse them.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

import torch

from bench.features import FeatureCache, artifact_key
from core.errors import BenchError
from core.files import atomic_write, read_jsonl
from core.models import LoadedModel
from core.presets import cache_dir
from tasks import chat
from tasks.base import encode_prompt
from tasks.sources import load_rows
from tasks.wmt import TEMPLATE as WMT_TEMPLATE

DISTILL_FILE = "distill.jsonl"
MIX_YEARS = (2015, 2016, 2017, 2018, 2019)  # never 2014, the evaluation year
STORIES = "tiny_corpus/tinystories_sample.txt"
STORY_TEMPLATE = "Continue the story: {opening}"
TARGET_BATCH = 16  # sequences per generate() call and per feature forward (fixed: padding changes the numbers)
MAX_PROMPT_TOKENS = 1024  # longer prompts are skipped (truncating would cut the chat template)
DEFAULT_PROMPTS = 256  # of the default mix (a --data file: all its prompts)
FEATURE_DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Continuation:
    """A prompt the target continues as it stands, without a chat template (a code-completion prompt)."""

    text: str


Prompt = str | list[dict[str, str]] | Continuation  # a user turn, a conversation ending with a user turn, or raw text


@dataclass
class Sequence:
    """A training sequence: the formatted prompt's ids and the target's greedy answer (its EOS included)."""

    prompt: list[int]
    answer: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.answer


def normalize(text: str) -> str:
    """The letters and digits of `text`, lower-cased: "Singapur , da" and "Singapur, da" compare equal."""
    return re.sub(r"[\W_]+", "", text.lower())


def evaluation_texts(data_dir: Path) -> set[str]:
    """The normalized texts of every evaluation prompt a training prompt must never equal."""
    texts = [turn for key in ("specbench", "mtbench") for row in load_rows(key, data_dir) for turn in row["turns"]]
    texts += [row["prompt"] for row in load_rows("humaneval", data_dir)]
    for row in load_rows("wmt2014", data_dir):
        texts += [row["src"], WMT_TEMPLATE.format(src=row["src"])]
    return {normalize(t) for t in texts}


def story_openings(data_dir: Path) -> list[str]:
    """The first two sentences of every paragraph of the TinyStories sample (a story's start or a later part)."""
    path = data_dir / STORIES
    if not path.is_file():
        raise BenchError(f"data file {path} does not exist (the default prompt mix reads it)")
    paragraphs = path.read_text(encoding="utf-8").split("\n\n")
    return [" ".join(re.split(r"(?<=[.!?])\s+", p.strip())[:2]) for p in paragraphs if p.strip()]


def default_prompts(data_dir: Path | None, n: int, seed: int) -> list[str]:
    """`n` prompts, a seeded mix of translation, math and story prompts, interleaved (module docstring)."""
    if data_dir is None:
        raise BenchError("the default prompt mix reads the data folder: set $DECODEBENCH_DATA or pass --data-dir")
    seen = evaluation_texts(data_dir)
    pools = [  # (prompt, its core: the source sentence, the question, the story opening)
        [(WMT_TEMPLATE.format(src=r["src"]), r["src"]) for y in MIX_YEARS for r in load_rows(f"wmt{y}", data_dir)],
        [(r["question"], r["question"]) for r in load_rows("gsm8k", data_dir)],
        [(STORY_TEMPLATE.format(opening=o), o) for o in story_openings(data_dir)],
    ]
    rng = random.Random(seed)
    drawn = []
    for i, pool in enumerate(pools):
        kept = sorted({p for p, core in pool if normalize(p) not in seen and normalize(core) not in seen})
        want = n // len(pools) + (i < n % len(pools))
        if want > len(kept):
            raise BenchError(f"--prompts {n} asks for {want} prompts of a kind that has {len(kept)}")
        drawn.append(rng.sample(kept, want))
    return [p for p in chain.from_iterable(zip_longest(*drawn)) if p is not None]


def file_prompts(path: Path) -> list[Prompt]:
    """The prompts of a jsonl file of {"prompt": str}, {"messages": [{"role", "content"}, ...]} or {"text": str}
    lines."""
    prompts: list[Prompt] = []
    for number, record in enumerate(read_jsonl(path, ()), start=1):
        prompt, messages, text = record.get("prompt"), record.get("messages"), record.get("text")
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt)
        elif isinstance(text, str) and text.strip():
            prompts.append(Continuation(text))
        elif isinstance(messages, list) and messages and all(_is_message(m) for m in messages):
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if not users:
                raise BenchError(f"{path}: record {number} has no user message")
            prompts.append(messages[: users[-1] + 1])  # a trailing answer is the target's to generate
        else:
            raise BenchError(f'{path}: record {number} needs a "prompt" or "text" string or a "messages" list')
    if not prompts:
        raise BenchError(f"{path} holds no prompts")
    return prompts


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict) and isinstance(message.get("role"), str) and isinstance(message.get("content"), str)
    )


def encode(tokenizer: Any, prompt: Prompt) -> list[int]:
    """A prompt's ids in the target's chat template (plain text without one), as evaluation prompts are built; a
    continuation's ids as the tokenizer encodes its text."""
    if isinstance(prompt, Continuation):
        return list(tokenizer(prompt.text)["input_ids"])
    if isinstance(prompt, str):
        return encode_prompt(tokenizer, prompt)
    template = chat.load(chat.HF, tokenizer)
    if template.source is None:
        return list(tokenizer("\n".join(m["content"] for m in prompt))["input_ids"])
    text = tokenizer.apply_chat_template(prompt, chat_template=template.source, add_generation_prompt=True,
                                         tokenize=False)  # fmt: skip
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_prompts(tokenizer: Any, data: str | None, data_dir: Path | None, n: int | None, seed: int,
                 eval_samples: int) -> tuple[list[list[int]], int]:  # fmt: skip
    """The encoded training prompts (the mix's `n`, or the first `n` of the --data file) and how many were skipped as
    too long."""
    texts = file_prompts(Path(data))[:n] if data is not None else default_prompts(data_dir, n or DEFAULT_PROMPTS, seed)
    if eval_samples >= len(texts):
        raise BenchError(f"--eval-samples {eval_samples} leaves no training prompts ({len(texts)} prompts)")
    encoded = [encode(tokenizer, t) for t in texts]
    kept = [p for p in encoded if len(p) <= MAX_PROMPT_TOKENS]
    if len(kept) <= eval_samples:
        raise BenchError(f"too few prompts within {MAX_PROMPT_TOKENS} tokens ({len(kept)})")
    return kept, len(encoded) - len(kept)


def read_distilled(path: Path, prompts: list[list[int]]) -> list[Sequence]:
    """The sequences already generated in `path` (a torn last line is dropped); they must be for `prompts`."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    done: list[Sequence] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            done.append(Sequence(list(record["prompt"]), list(record["answer"])))
        except (ValueError, KeyError, TypeError):
            if number < len(lines):
                raise BenchError(f"{path}: line {number} is malformed; use another --out") from None
            atomic_write(path, "".join(f"{x}\n" for x in lines[:-1]))  # interrupted while appending
    if len(done) > len(prompts) or any(s.prompt != p for s, p in zip(done, prompts, strict=False)):
        raise BenchError(f"{path} holds answers to other prompts; use another --out")
    return done


def generate(target: LoadedModel, prompts: list[list[int]], answer_tokens: int) -> list[list[int]]:
    """The target's greedy answers to a batch of prompts (left padded), each cut after its first EOS."""
    from transformers import GenerationConfig

    eos = target.eos_ids()
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else eos[0]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=target.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=target.device)
    config = GenerationConfig(max_new_tokens=answer_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    with torch.no_grad():
        out = target.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    answers = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        answers.append(row[:end])
    return answers


def distill(target: LoadedModel, prompts: list[list[int]], out: Path, answer_tokens: int, batch: int,
            tick: Callable[[int], None], answers_from: str | None = None) -> list[Sequence]:  # fmt: skip
    """Every prompt with the target's answer: the ones in `out`/distill.jsonl (at the start, those of the
    `answers_from` run's, which must answer the same prompts), then new batches appended to it (`tick(n)` after
    each). Answers are greedy and batched the same way in every run, so reusing them changes nothing."""
    path = out / DISTILL_FILE
    if answers_from is not None and not path.is_file():
        source = Path(answers_from) / DISTILL_FILE
        if not source.is_file():
            raise BenchError(f"--answers-from {answers_from}: no {DISTILL_FILE} there")
        read_distilled(source, prompts)
        atomic_write(path, source.read_text(encoding="utf-8"))
    done = read_distilled(path, prompts)
    tick(len(done))
    for start in range(len(done), len(prompts), batch):
        chunk = prompts[start : start + batch]
        sequences = [Sequence(p, a) for p, a in zip(chunk, generate(target, chunk, answer_tokens), strict=True)]
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps({"prompt": s.prompt, "answer": s.answer}) + "\n" for s in sequences))
        done += sequences
        tick(len(chunk))
    return done


def feature_cache(target: LoadedModel, sequences: list[Sequence], batch: int) -> FeatureCache:
    """The target's last hidden states of `sequences`, on disk under the model cache, keyed by the artifact."""
    name = f"{artifact_key(target.artifact)}-{target.artifact.get('dtype', 'float32')}-final-bf16"
    folder = cache_dir() / "drafter-features" / name

    @torch.no_grad()
    def encode_batch(seqs: list[list[int]]) -> list[torch.Tensor]:
        out = []
        for start in range(0, len(seqs), batch):  # FeatureCache asks for what is missing: a batch at a time
            chunk = seqs[start : start + batch]
            width = max(len(s) for s in chunk)
            ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk], device=target.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=target.device)
            hidden = target.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            out += [h[: len(s)].to("cpu", FEATURE_DTYPE) for h, s in zip(hidden, chunk, strict=True)]
        return out

    return FeatureCache(encode_batch, [s.ids for s in sequences], FEATURE_DTYPE, folder)
