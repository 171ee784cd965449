"""Chat templates: how a task's user turn (after earlier turns) becomes the prompt's token ids.

`--chat-template` names one: `hf` (default) the tokenizer's own template, or plain text when the tokenizer has none
(the run then records `none`); `none` plain text (earlier turns and answers joined by newlines); a template shipped
in `tasks/templates/` (`vicuna_v1.1`, FastChat's Vicuna format that Spec-Bench uses, and `llama-2-chat`, FastChat's
Llama-2 format of Lookahead's MT-bench runs); or a path to a `.jinja` file. `--system-prompt` replaces the
template's system message (a `system` message first); plain text has no place for one.

BOS: a tokenizer's own template carries its BOS and is encoded as transformers does (no special tokens added).
A file template is encoded with the tokenizer's special tokens (its BOS, as FastChat's `tokenizer([prompt])`
adds it) unless its text already starts with the BOS token, so a prompt never holds two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BenchError

HF, NONE = "hf", "none"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def shipped() -> list[str]:
    """The names of the templates shipped with decodebench."""
    return sorted(p.name.removesuffix(".jinja") for p in TEMPLATE_DIR.glob("*.jinja"))


def describe(name: str) -> str:
    """A shipped template's one-line description: the start of its leading comment."""
    text = (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")
    comment = text.removeprefix("{#-").split("-#}")[0] if text.startswith("{#-") else ""
    return " ".join(comment.split()).split(" (")[0]


def label(choice: str) -> str:
    """How a choice is recorded: a template file by its file name (never a machine path), others as given."""
    return Path(choice).name if choice.endswith(".jinja") else choice


def check(choice: str, system_prompt: str | None = None) -> None:
    """Raise a `BenchError` for a template that does not exist, or a system prompt that plain text cannot take."""
    if choice.endswith(".jinja"):
        if not Path(choice).is_file():
            raise BenchError(f"chat template file {choice} does not exist")
    elif choice not in (HF, NONE) and choice not in shipped():
        options = ", ".join([HF, NONE, *shipped()])
        raise BenchError(f"unknown chat template {choice!r}; choose {options} or a path to a .jinja file")
    if choice == NONE and system_prompt is not None:
        raise BenchError("--system-prompt needs a chat template; --chat-template none sends plain text")


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved prompt format: its recorded name, its jinja source (None: plain text) and the system prompt
    that replaces the template's own (None: the template's)."""

    name: str
    source: str | None = None
    system_prompt: str | None = None

    @property
    def sha256(self) -> str | None:
        return hashlib.sha256(self.source.encode()).hexdigest() if self.source is not None else None

    def describe(self) -> dict[str, Any]:
        """What the manifest records: name, sha256 of the template text (None for plain text), system prompt."""
        return {"name": self.name, "sha256": self.sha256, "system_prompt": self.system_prompt}

    def render(self, tokenizer: Any, text: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The prompt text of user turn `text` after the (user, answer) pairs of `history`."""
        if self.source is None:
            return "".join(f"{u}\n{a}\n\n" for u, a in history) + text
        from jinja2 import TemplateError

        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        for user, answer in history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": text})
        try:
            return tokenizer.apply_chat_template(
                messages, chat_template=self.source, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            raise BenchError(f"chat template {self.name}: {exc}") from None

    def encode(self, tokenizer: Any, text: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The prompt's token ids, with one BOS where the tokenizer uses one (module docstring)."""
        rendered = self.render(tokenizer, text, history)
        bos = getattr(tokenizer, "bos_token", None)
        special = self.source is None or (self.name != HF and not (bos and rendered.startswith(bos)))
        return list(tokenizer(rendered, add_special_tokens=special)["input_ids"])


def load(choice: str, tokenizer: Any, system_prompt: str | None = None) -> ChatTemplate:
    """The template `choice` names, for `tokenizer` (`hf` reads the tokenizer's own)."""
    check(choice, system_prompt)
    if choice == HF:
        own = tokenizer.get_chat_template() if getattr(tokenizer, "chat_template", None) else None
        if own is None and system_prompt is not None:
            raise BenchError(
                "the tokenizer has no chat template, so --chat-template hf sends plain text, which takes no "
                f"--system-prompt; name a template ({', '.join(shipped())} or a .jinja file)"
            )
        return ChatTemplate(HF, own, system_prompt) if own is not None else ChatTemplate(NONE)
    if choice == NONE:
        return ChatTemplate(NONE)
    path = Path(choice) if choice.endswith(".jinja") else TEMPLATE_DIR / f"{choice}.jinja"
    return ChatTemplate(label(choice), path.read_text(encoding="utf-8"), system_prompt)
