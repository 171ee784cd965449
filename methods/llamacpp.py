"""`llamacpp` and `llamacpp-pld`: llama.cpp (ggml-org) through llama-cpp-python (the optional extra
`pip install -e .[llamacpp]`), the external engine reference, on our prompts, stop rule and timer.

The target must be an offline GGUF preset: llama.cpp runs the preset's own GGUF (`--gguf-type native`) or a
conversion of it (methods/gguf_types.py). Our prompt ids go in as they are (the tokenizer is the GGUF's own, converted
by transformers; a different vocabulary size is refused). Greedy only (temperature 0, llama.cpp's greedy sampler):
llama.cpp draws samples with its own generator, which cannot follow our seeded sampler. Each generation starts from an
empty KV cache (no prefix reuse), so the prefill is timed and the first mark is the time to first token; one mark per
llama.cpp forward after it. The tokens are llama.cpp's, not our model's: the harness compares texts
(`compares_text`), and the method is not lossless by our definition (another engine, other kernels, other weights
unless converted).

`llamacpp-pld` adds llama-cpp-python's `LlamaPromptLookupDecoding` as `Llama(draft_model=...)`: the context's last
n-gram (n from max_ngram down to 1), its earliest earlier occurrence with a non-empty continuation, up to
num_candidates tokens (`pld`'s rule and defaults; no EOS cut), verified in one llama.cpp forward; greedy, so lossless
with respect to `llamacpp`. llama-cpp-python makes every forward return logits for all its tokens
(`logits_all`) when a draft model is set, the prompt's included, and copies them to numpy: that cost is the library's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import BenchError
from core.files import file_sha256
from core.models import LoadedModel
from core.options import Options, option
from core.timing import Timer
from methods.base import Decoded, Method, register
from methods.decode import Sampler, StopRule
from methods.gguf_types import GGUF_TYPES, ftype_name, gguf_for, import_llama_cpp, shipped_gguf

ENGINE = "llama.cpp (ggml-org) via llama-cpp-python"


@dataclass(frozen=True)
class LlamaCppOptions(Options):
    gguf_type: str = option(
        "native",
        "weights llama.cpp runs: native = the preset's GGUF as shipped (smollm2 Q4_1, qwen and gemma Q4_K_M); "
        "f16, bf16, q8_0, q4_0 = converted once from it by llama.cpp's quantizer (the shipped weights dequantized, "
        "then stored in that type; f16 = our torch weights rounded to float16) into the model cache",
        choices=GGUF_TYPES,
        label="gguf",
    )
    n_ctx: int = option(4096, "llama.cpp context length (KV cache): prompt + new tokens must fit", min=16)


@dataclass(frozen=True)
class LlamaCppLookupOptions(LlamaCppOptions):
    """`pld`'s option names and defaults, read as LlamaPromptLookupDecoding's max_ngram_size / num_pred_tokens."""

    max_ngram: int = option(3, "largest n-gram to match (llama-cpp-python's max_ngram_size)", min=1)
    num_candidates: int = option(
        10, "draft tokens per step (llama-cpp-python's num_pred_tokens)", min=1, label="candidates"
    )


class _LlamaCpp(Method):
    """One llama.cpp model per method instance, reused by every generation (its KV cache cleared each time)."""

    family = "llama.cpp"
    Options = LlamaCppOptions
    lossless = False  # another engine's tokens: the harness compares texts
    compares_text = True
    quantizable = False  # llama.cpp runs its own file: --gguf-type picks its weights' type

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: LlamaCppOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        if sampler is not None:
            raise BenchError(f"{self.name} decodes greedily only (--temperature 0): llama.cpp samples with its own "
                             "generator, which cannot follow ours")  # fmt: skip
        self.source = shipped_gguf(target, self.name)
        self.llama_cpp = import_llama_cpp()
        self.threads = torch.get_num_threads()  # the run's --threads
        self.path = gguf_for(self.source, self.options.gguf_type, self.threads)
        draft = self.draft_model()
        try:
            self.llm = self.llama_cpp.Llama(
                str(self.path),
                n_ctx=self.options.n_ctx,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                draft_model=draft,
                # with a draft, llama-cpp-python 0.3.36 keeps every row's logits but sizes their buffer from this
                # argument (n_batch rows when False): a prompt past n_batch tokens then fails to broadcast
                logits_all=draft is not None,
                verbose=False,
            )
        except ValueError as exc:
            raise BenchError(f"llama.cpp could not load {self.path.name}: {exc}") from exc
        vocab, ours = self.llm.n_vocab(), len(target.tokenizer)
        if vocab != ours:
            raise BenchError(f"{self.name}: llama.cpp's vocabulary has {vocab} tokens, the target tokenizer {ours}")
        self.step_sizes: list[int] = []  # query tokens of each llama.cpp eval of the current generation
        self._eval = self.llm.eval
        self.llm.eval = self._counted_eval  # Llama.generate calls self.eval once per forward
        self._sha256: str | None = None

    def draft_model(self) -> Any:
        """The llama-cpp-python draft model (None: plain decoding)."""
        return None

    def _counted_eval(self, tokens: Sequence[int]) -> None:
        self.step_sizes.append(len(tokens))
        self._eval(tokens)

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        if len(prompt_ids) + stop.max_new_tokens > self.options.n_ctx:
            raise BenchError(f"{self.name}: prompt ({len(prompt_ids)}) + --max-new-tokens ({stop.max_new_tokens}) "
                             f"exceed --n-ctx {self.options.n_ctx}")  # fmt: skip
        self.llm.reset()  # no prefix reuse: the whole prompt is evaluated inside the timed region
        self.step_sizes = []
        tokens: list[int] = []
        accepted: list[int] = []
        steps = self.llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        timer.start()
        for token in steps:
            if len(self.step_sizes) > len(accepted):  # the first token of a new llama.cpp forward
                timer.mark()
                accepted.append(0)
            tokens.append(int(token))
            accepted[-1] += 1
            if stop.end(tokens, len(tokens) - 1):
                break
        timing = timer.read()
        steps.close()
        n_batch = self.llm.n_batch
        forwards = sum(-(-size // n_batch) for size in self.step_sizes)  # llama_decode calls (n_batch chunks)
        drafted = [0] + [size - 1 for size in self.step_sizes[1:]] if self.llm.draft_model is not None else None
        return Decoded(tokens, accepted, timing, forwards=forwards, drafted=drafted, step_tokens=self.step_sizes)

    def manifest(self) -> dict[str, Any]:
        native = self.path == self.source
        if self._sha256 is None:
            self._sha256 = self.target.artifact.get("sha256") if native else file_sha256(self.path)
        record = {
            "engine": ENGINE,
            "llama_cpp_python": self.llama_cpp.__version__,
            "gguf_type": ftype_name(self.llama_cpp, self.llm._model.model),
            "gguf_file": self.path.name,
            "gguf_sha256": self._sha256,
            "gguf_bytes": self.path.stat().st_size,
            "n_threads": self.threads,
            "n_ctx": self.options.n_ctx,
            "n_batch": self.llm.n_batch,
            "prefix_cache": False,
        }
        if not native:
            record["converted_from"] = {"file": self.source.name, "sha256": self.target.artifact.get("sha256")}
            record["conversion"] = "llama_model_quantize, allow_requantize (shipped weights dequantized, then stored)"
        return record


@register
class LlamaCpp(_LlamaCpp):
    name = "llamacpp"
    description = f"{ENGINE}: greedy decoding of the preset's GGUF, the external engine reference"


@register
class LlamaCppLookup(_LlamaCpp):
    name = "llamacpp-pld"
    description = (
        f"{ENGINE} with its LlamaPromptLookupDecoding draft (Saxena 2023, prompt lookup decoding), external "
        "engine reference for pld"
    )
    Options = LlamaCppLookupOptions

    def draft_model(self) -> Any:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        o = self.options
        return LlamaPromptLookupDecoding(max_ngram_size=o.max_ngram, num_pred_tokens=o.num_candidates)
