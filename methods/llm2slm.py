"""`llm2slm`: LLM-to-SLM (Bergner et al. 2024, "Think Big, Generate Quick: LLM-to-SLM for Fast Autoregressive
Decoding").

A frozen large model encodes the prompt once, in parallel: an encoder-decoder LLM (T5) through its encoder, a
decoder-only LLM through one prefill of its base model (last hidden states, after the final norm, no LM head). A
small MLP projector maps those features to the small model's embedding width; they are added to (`add`) or replace
(`replace`) the SLM's embeddings of the prompt tokens, and the decoder-only SLM then generates the whole answer
autoregressively with its own KV cache. The LLM never runs again for that prompt.

Prompts are in the LLM's tokenization. When the SLM has the same vocabulary it embeds the prompt ids itself;
otherwise the checkpoint's `bridge` decides (`methods.llm2slm_align`): `aligned` (the paper's design, the default
for new runs) re-tokenizes the prompt's text for the SLM and gives each SLM token the mean projection of the LLM
tokens covering its characters; `adapter` (checkpoints that record no bridge) reads the LLM's ids through the LLM's
frozen input embeddings and a trained linear adapter (`add` mode only: `replace` discards the token embeddings).
Answers are always in the SLM's tokenization. Checkpoints come from `bench train llm2slm` (bench/train.py); they
hold the trainable weights only, the models are reloaded by spec. The LLM features and the answer losses are in
`methods.llm2slm_io`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import models
from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options, option
from core.timing import Timer, Timing
from methods.base import Decoded, Method, register
from methods.decode import Sampler, StopRule
from methods.kvcache import new_cache
from methods.llm2slm_align import BRIDGES, LEGACY_BRIDGE, align_prompt, aligned_embeds, check_fast, fit_adapter
from methods.llm2slm_io import answer_loss, check_layer, llm_features, seq2seq_loss

MODES = ("add", "replace")
TUNINGS = ("full", "lora", "frozen")
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
STATE_FILE = "checkpoint.json"
WEIGHTS_FILE = "trainable.safetensors"


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BenchError(f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")


def tune(model: nn.Module, tuning: str) -> nn.Module:
    """Make the SLM trainable as asked: every weight (`full`), LoRA adapters only (`lora`, via peft) or none."""
    check_choice("--slm-tuning", tuning, TUNINGS)
    model.requires_grad_(tuning == "full")
    if tuning != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated for v6
        return get_peft_model(model, LoraConfig(**LORA))


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load saved trainable weights, refusing a set of names that does not fit the module's configuration."""
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise BenchError(f"checkpoint weights do not fit its recorded configuration ({len(odd)} names differ)")
    module.load_state_dict(state, strict=False)


def same_vocab(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


class Bridge(nn.Module):
    """The trained link from the LLM to the SLM: the projector (Linear, GELU, Linear) of the LLM's features, with
    `feature_norm` a LayerNorm before it, and, for different vocabularies bridged by `adapter`, the adapter (Linear)
    of the LLM's input token embeddings.

    In `add` mode the projector's last layer starts at zero, so training starts from the SLM's own behaviour
    instead of adding features of an unrelated scale to its embeddings."""

    def __init__(self, d_llm: int, d_slm: int, mode: str, d_adapter: int | None, feature_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_llm) if feature_norm else None
        self.projector = nn.Sequential(nn.Linear(d_llm, d_slm), nn.GELU(), nn.Linear(d_slm, d_slm))
        if mode == "add":
            nn.init.zeros_(self.projector[2].weight)
            nn.init.zeros_(self.projector[2].bias)
        self.adapter = nn.Linear(d_adapter, d_slm) if d_adapter else None

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The LLM's features (length, d_llm) in the SLM's width, through the feature norm when there is one."""
        return self.projector(features if self.norm is None else self.norm(features))


class LLM2SLM(nn.Module):
    """The SLM and its bridge from the LLM. The LLM is held outside the module's parameters (a LoadedModel is no
    Module): frozen, in eval mode, run under no_grad, never saved."""

    def __init__(
        self,
        llm: LoadedModel,
        slm: LoadedModel,
        mode: str = "add",
        tuning: str = "full",
        bridge: str = "aligned",
        llm_layer: int = -1,
        feature_norm: bool = False,
    ) -> None:
        super().__init__()
        check_choice("--mode", mode, MODES)
        check_choice("--bridge", bridge, BRIDGES)
        check_layer(llm_layer, llm.model)
        self.encoder_decoder = bool(slm.model.config.is_encoder_decoder)  # the bridged prompt is its encoder input
        self.llm, self.mode, self.llm_layer = llm, mode, llm_layer
        self.slm_tokenizer, self.slm_eos = slm.tokenizer, frozenset(slm.eos_ids())
        llm.model.requires_grad_(False).eval()
        self.same_vocab = same_vocab(llm.tokenizer, slm.tokenizer)
        self.aligned = bridge == "aligned" and not self.same_vocab
        if self.aligned:
            check_fast(llm.tokenizer, slm.tokenizer)
        d_slm = slm.model.get_input_embeddings().embedding_dim
        plain = self.same_vocab or self.aligned or mode == "replace"
        d_adapter = None if plain else llm.model.get_input_embeddings().embedding_dim
        self.bridge = Bridge(llm.model.config.hidden_size, d_slm, mode, d_adapter, feature_norm)
        if self.bridge.adapter is not None:
            fit_adapter(self.bridge.adapter, llm, slm)
        self.bridge.to(slm.device, next(slm.model.parameters()).dtype)
        self.slm = tune(slm.model, tuning)

    @property
    def dtype(self) -> torch.dtype:
        return self.bridge.projector[0].weight.dtype

    def encode(self, prompts: list[list[int]]) -> list[torch.Tensor]:
        """The LLM's features of each prompt (one right-padded batch), cast to the SLM's dtype."""
        device = self.llm.device
        length = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (length - len(p)) for p in prompts], device=device)
        mask = torch.tensor([[1] * len(p) + [0] * (length - len(p)) for p in prompts], device=device)
        features = llm_features(self.llm.model, ids, mask, self.llm_layer)
        return [features[i, : len(p)].to(self.dtype) for i, p in enumerate(prompts)]

    def prompt_embeds(self, prompt_ids: list[int], features: torch.Tensor) -> torch.Tensor:
        """The SLM's input for a prompt (length, d_slm): projected LLM features, added to the prompt's token
        embeddings (the SLM's own, or the LLM's through the adapter) or replacing them; `aligned`: in the SLM's
        own tokens of the prompt (`methods.llm2slm_align`)."""
        projected = self.bridge.project(features)
        if self.aligned:
            own_ids, weights = align_prompt(self.llm.tokenizer, self.slm_tokenizer, prompt_ids)
            return aligned_embeds(self.slm.get_input_embeddings(), own_ids, weights, projected, self.mode)
        if self.mode == "replace":
            return projected
        ids = torch.tensor(prompt_ids, device=features.device)
        if self.bridge.adapter is None:
            return self.slm.get_input_embeddings()(ids) + projected
        return self.bridge.adapter(self.llm.model.get_input_embeddings()(ids).to(self.dtype)) + projected

    def loss(
        self, prompts: list[list[int]], features: list[torch.Tensor], answers: list[list[int]]
    ) -> tuple[torch.Tensor, int]:
        embeds = [self.prompt_embeds(p, f) for p, f in zip(prompts, features, strict=True)]
        return (seq2seq_loss if self.encoder_decoder else answer_loss)(self.slm, embeds, answers)

    def for_inference(self) -> LLM2SLM:
        """Merge LoRA adapters into the SLM's weights (no adapter cost per token), eval mode, no gradients."""
        if hasattr(self.slm, "merge_and_unload"):
            self.slm = self.slm.merge_and_unload()
        self.requires_grad_(False)
        return self.eval()

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer, sampler: Sampler | None) -> Decoded:
        """Encode the prompt with the LLM (marked), prefill the SLM with the bridged embeddings (an encoder-decoder
        SLM: run its encoder on them, then its decoder's start token), then decode with the SLM alone. `encode_s`
        is the encode mark; the timing's first token is the SLM's prefill."""
        timer.start()
        features = self.encode([prompt_ids])[0]
        timer.mark()
        embeds = self.prompt_embeds(prompt_ids, features)[None]
        logits, forward = self.encoder_decoder_prefill(embeds) if self.encoder_decoder else self.prefill(embeds)
        tokens: list[int] = []
        while True:
            tokens.append(int(logits.argmax()) if sampler is None else sampler.sample(sampler.probs(logits)))
            timer.mark()
            if stop.end(tokens, len(tokens) - 1) is not None:
                break
            logits = forward(torch.tensor([tokens[-1:]], device=features.device))
        marks = timer.read()
        timing = Timing(first=marks.steps[0], steps=marks.steps[1:], total=marks.total)
        return Decoded(tokens, [1] * len(tokens), timing, encode_s=marks.first)

    def prefill(self, embeds: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """A decoder-only SLM's logits after the bridged prompt, and its next-token step (ids -> logits)."""
        cache = new_cache(self.slm)
        logits = self.slm(inputs_embeds=embeds, past_key_values=cache, logits_to_keep=1).logits[0, -1]
        return logits, lambda ids: self.slm(ids, past_key_values=cache).logits[0, -1]

    def encoder_decoder_prefill(
        self, embeds: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """An encoder-decoder SLM's logits after its encoder read the bridged prompt and its decoder the start
        token, and its decoder's next-token step (ids -> logits), on a self- and cross-attention cache."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        memory = BaseModelOutput(last_hidden_state=self.slm.get_encoder()(inputs_embeds=embeds).last_hidden_state)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

        def forward(ids: torch.Tensor) -> torch.Tensor:
            return self.slm(encoder_outputs=memory, decoder_input_ids=ids, past_key_values=cache).logits[0, -1]

        start = torch.tensor([[self.slm.config.decoder_start_token_id]], device=embeds.device)
        return forward(start), forward


def read_record(path: str | Path, kind: str | None = "llm2slm") -> dict[str, Any]:
    """The checkpoint record of a `bench train` output folder, checked for the fields its users read."""
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise BenchError(f"{path} is not a bench train checkpoint (no {STATE_FILE})")
    try:
        record = json.loads(file.read_text())
    except ValueError:
        raise BenchError(f"{file} is not valid JSON") from None
    fields = ("kind", "config", "step", "wall_s", "slm_artifact", "llm_artifact")
    missing = [k for k in fields if not isinstance(record, dict) or k not in record]
    if missing:
        raise BenchError(f"{file} is malformed: it lacks {', '.join(missing)}")
    if kind is not None and record["kind"] != kind:
        raise BenchError(f"{path} is a `bench train {record['kind']}` checkpoint, not {kind}")
    config = record["config"] if isinstance(record["config"], dict) else {}
    # llm2slm checkpoints from before `bridge` was recorded are adapter ones; the slm baseline records none
    bridge = config.setdefault("bridge", LEGACY_BRIDGE) if record["kind"] == "llm2slm" else LEGACY_BRIDGE
    config.setdefault("llm_layer", -1)  # checkpoints from before --llm-layer read the last layer
    config.setdefault("feature_norm", False)  # and had no feature norm
    if config.get("mode") not in MODES or config.get("slm_tuning") not in TUNINGS or bridge not in BRIDGES:
        raise BenchError(f"{file} is malformed: its config lacks a valid mode, slm_tuning and bridge")
    return record


def artifact_spec(artifact: dict[str, Any]) -> str:
    """What to pass to `models.load` to get a recorded artifact again: the spec it was loaded by (a local folder as
    it was given, relative to the folder training ran in; results record it only as a portable path)."""
    return artifact["spec"]


def checkpoint_llm(path: str | Path) -> str:
    """The LLM an llm2slm checkpoint was trained for (what `bench run --checkpoint` uses without --model)."""
    return artifact_spec(read_record(path)["llm_artifact"])


def check_artifact(recorded: dict[str, Any], loaded: dict[str, Any], role: str) -> None:
    """Refuse a model that is not the one the checkpoint was trained for (any dtype or attention path is fine)."""
    ignored = {"dtype", "attention"}  # how the weights run, not which weights
    differ = sorted(k for k in (recorded.keys() | loaded.keys()) - ignored if recorded.get(k) != loaded.get(k))
    if differ:
        raise BenchError(
            f"checkpoint was trained for the {role} {recorded.get('spec')!r}, not {loaded.get('spec')!r} "
            f"(artifacts differ in {', '.join(differ)})"
        )


def load_checkpoint(path: str | Path, llm: LoadedModel) -> LLM2SLM:
    """An llm2slm checkpoint for the loaded LLM, its SLM loaded in the LLM's dtype and device, ready to decode."""
    from safetensors.torch import load_file

    record = read_record(path)
    check_artifact(record["llm_artifact"], llm.artifact, "LLM")
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise BenchError(f"{path} is malformed: no {WEIGHTS_FILE}")
    slm = models.load(artifact_spec(record["slm_artifact"]), llm.artifact.get("dtype", "float32"), str(llm.device))
    check_artifact(record["slm_artifact"], slm.artifact, "SLM")
    config = record["config"]
    model = LLM2SLM(llm, slm, config["mode"], config["slm_tuning"], config["bridge"], config["llm_layer"],
                    config["feature_norm"])  # fmt: skip
    try:
        state = load_file(weights, device=str(llm.device))
    except Exception as exc:  # safetensors raises its own error types for torn or foreign files
        raise BenchError(f"could not read {weights}: {exc}") from exc
    load_trainable(model, state)
    return model.for_inference()


@dataclass(frozen=True)
class LLMToSLMOptions(Options):
    checkpoint: str | None = option(None, "a `bench train llm2slm` checkpoint folder (its LLM is the default --model)")

    def check(self, owner: str) -> None:
        if self.checkpoint is None:
            raise BenchError("method llm2slm needs --checkpoint (a folder written by `bench train llm2slm`)")


@register
class LLMToSLM(Method):
    """LLM-to-SLM decoding with a `bench train llm2slm` checkpoint; the target (`--model`) is the LLM.

    target_forwards counts SLM forwards (one per generated token, so tau = 1); the LLM's single prompt encoding is
    reported as `encode_s` (inside ttft). Outputs are the SLM's tokens, so the method is not lossless.
    """

    name = "llm2slm"
    description = "LLM-to-SLM: the LLM encodes the prompt once, a fine-tuned small model generates (--checkpoint)"
    Options = LLMToSLMOptions
    lossless = False

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: LLMToSLMOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        self.model = load_checkpoint(self.options.checkpoint, target)

    @classmethod
    def default_model(cls, options: LLMToSLMOptions) -> str | None:
        return checkpoint_llm(options.checkpoint)

    @property
    def output_tokenizer(self) -> Any:
        return self.model.slm_tokenizer

    def output_eos_ids(self) -> frozenset[int]:
        return self.model.slm_eos

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        return self.model.generate(prompt_ids, stop, timer, self.sampler)
