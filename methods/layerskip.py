"""`layerskip`: self-speculative decoding by layer skipping (Zhang et al. 2023, "Draft & Verify: Lossless Large
Language Model Acceleration via Self-Speculative Decoding"; Xia et al. 2024, "SWIFT: On-the-Fly Self-Speculative
Decoding for LLM Inference Acceleration").

The target with some of its decoder layers skipped drafts for itself; the full target verifies in one forward
(greedy: lossless; sampling: rejection sampling with the draft's probabilities, as `speculative`). As in the Draft &
Verify reference (`exact_self_speculative_generate`), a step drafts up to `num_draft` tokens (the reference's
`max_step_draft=12`) and stops after a draft token whose probability under the draft's plain softmax is below
`stop_threshold` (its `th_stop_draft=0.8`); under sampling that is the sampled token's probability, as in the
reference's `self_speculative_sample`.

The draft is a *skip view*: a shallow copy of the target's module tree whose skipped decoder layers are identities.
It shares every weight and leaves the target untouched (the verification forward is always the full model). It
keeps its own KV cache (`SkipCache`), holding the kept layers only, synced to the committed context before every
draft as `speculative`'s draft model is (a crop after a rejection). The Draft & Verify reference skips attention and
MLP blocks separately and lets the draft read the full model's keys/values of the committed context; here whole
layers are skipped and the draft's cache holds its own keys/values (the issue's design).

`skip_layers`: layer indices ("3,5,7", ranges "4-9"), `none`, `alternate` (SWIFT's starting set: every other layer
between the first and the last) or `auto` (methods.layerskip_search: the fastest of a few candidate sets on
calibration text, cached per model). The set used is `LayerSkip.resolved_skip`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from core.errors import BenchError
from core.files import portable
from core.models import LoadedModel
from core.options import Options, option
from methods import layerskip_search
from methods.base import DraftingMethod, register
from methods.decode import Draft, Drafter, Sampler
from methods.kvcache import new_cache
from methods.speculative import DraftModelDrafter

AUTO, ALTERNATE, NONE = "auto", "alternate", "none"
_ITEM = re.compile(r"(\d+)(?:-(\d+))?")


def parse_skip(text: str) -> tuple[int, ...] | str:
    """`auto`/`alternate` as they are, `none` as (), else the sorted layer indices of "3,5,7" / "4-9" / "1,4-9"."""
    value = text.strip().lower()
    if value in (AUTO, ALTERNATE):
        return value
    if value == NONE:
        return ()
    layers: set[int] = set()
    for item in value.split(","):
        match = _ITEM.fullmatch(item.strip())
        if match is None:
            raise BenchError(f"--skip-layers: {item.strip()!r} is not a layer index or a range A-B (got {text!r}; "
                             "e.g. 3,5,7 or 4-9, or auto, alternate, none)")  # fmt: skip
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise BenchError(f"--skip-layers: range {item.strip()} runs backwards")
        layers.update(range(first, last + 1))
    return tuple(sorted(layers))


def alternate(n_layers: int) -> tuple[int, ...]:
    """SWIFT's starting skip set: every other layer from the second, keeping the first and the last."""
    return tuple(range(1, n_layers - 1, 2))


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder layers a skip view can leave out (`model.<base_model_prefix>.layers`)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise BenchError(f"layerskip needs a decoder with a list of layers; {type(model).__name__} has none")
    return layers


def check_skip(skip: tuple[int, ...], n_layers: int) -> None:
    """Refuse indices outside the model and a set that skips every layer."""
    outside = [i for i in skip if i >= n_layers]
    if outside:
        raise BenchError(f"--skip-layers: layer {outside[0]} does not exist (the model has layers 0-{n_layers - 1})")
    if len(skip) >= n_layers:
        raise BenchError(f"--skip-layers skips all {n_layers} layers: the draft must keep at least one")


class Skipped(torch.nn.Module):
    """A decoder layer left out: returns its input hidden states."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def skip_view(model: Any, skip: tuple[int, ...]) -> Any:
    """The model with the `skip` decoder layers replaced by identities: shallow copies of the model and of its
    decoder, sharing every weight and the config (layer `i` of the view is layer `i` of the model or skipped, so
    per-layer-type masks and the attention modules' `layer_idx` stay right). The model itself is not changed."""
    layers = decoder_layers(model)
    base = getattr(model, model.base_model_prefix)
    inner = copy.copy(base)
    inner._modules = dict(base._modules)  # a copy's own children: assigning `layers` leaves the model's alone
    inner.layers = torch.nn.ModuleList(Skipped() if i in skip else layer for i, layer in enumerate(layers))
    view = copy.copy(model)
    view._modules = dict(model._modules)
    setattr(view, model.base_model_prefix, inner)
    return view


class SkipCache(DynamicCache):
    """A KV cache of the kept layers only: an attention module's `layer_idx` (an index into the full model) maps
    to its position among the kept layers, so every layer-0 query (sequence length, mask sizes) reads a kept one."""

    def __init__(self, model: Any, kept: list[int]) -> None:
        super().__init__()
        full = new_cache(model)  # growing / rollback-capable layers of the right types (methods.kvcache)
        self.layers = [full.layers[i] for i in kept]
        self.layer_class_to_replicate = None
        self.index = {layer: i for i, layer in enumerate(kept)}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        return super().update(key_states, value_states, self.index[layer_idx], *args, **kwargs)


class LayerSkipDrafter(DraftModelDrafter):
    """Drafts with a skip view of the target (its own `SkipCache`), up to `k` tokens, stopping after a token whose
    draft probability is below `threshold` (Draft & Verify's early draft exit)."""

    def __init__(self, view: LoadedModel, kept: list[int], k: int, threshold: float, sampler: Sampler | None) -> None:
        super().__init__(view, k, False, sampler)
        self.cache = SkipCache(self.model, kept)
        self.threshold = threshold

    def propose(self, context: list[int], budget: int) -> Draft | None:
        logits = self.sync(context)  # after a rejection: the cache cropped to the committed context
        tokens, probs = [], []
        for i in range(min(self.k, budget)):
            token, q = self.choose(logits)
            tokens.append(token)
            probs += [q] if q is not None else []
            confidence = float(torch.softmax(logits.float(), -1)[token])
            if confidence < self.threshold or i + 1 == min(self.k, budget):
                break
            logits = self._forward([token])
        return Draft.chain(tokens, torch.stack(probs) if probs else None)


@dataclass(frozen=True)
class LayerSkipOptions(Options):
    skip_layers: str = option(
        ALTERNATE,
        "decoder layers the draft skips: indices and ranges (3,5,7 or 4-9), none, alternate (SWIFT's start: every "
        "other layer, keeping the first and last) or auto (the fastest of a few sets on calibration text from "
        "$DECODEBENCH_DATA/tiny_corpus, cached per model)",
        label="skip",
    )
    num_draft: int = option(12, "most draft tokens per step (Draft & Verify's max_step_draft=12)", min=1, label="k")
    stop_threshold: float = option(
        0.8,
        "stop drafting after a token whose draft probability is below this (Draft & Verify's th_stop_draft=0.8; "
        "0: always draft num_draft tokens)",
        min=0.0,
        max=1.0,
        label="th",
    )

    def check(self, owner: str) -> None:
        parse_skip(self.skip_layers)


@register
class LayerSkip(DraftingMethod):
    name = "layerskip"
    description = (
        "self-speculative decoding by layer skipping: Zhang et al. 2023, Draft & Verify: Lossless LLM Acceleration "
        "via Self-Speculative Decoding (skip set search after Xia et al. 2024, SWIFT) (lossless)"
    )
    family = "layer skip"
    Options = LayerSkipOptions

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: LayerSkipOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        self.n_layers = len(decoder_layers(target.model))
        skip = parse_skip(self.options.skip_layers)
        self.search: dict[str, Any] | None = None  # `auto`: the search record (candidates and their tokens/s)
        if skip == ALTERNATE:
            skip = alternate(self.n_layers)
        elif skip == AUTO:
            settings = {"num_draft": self.options.num_draft, "stop_threshold": self.options.stop_threshold}
            self.search = layerskip_search.resolve(target, self.n_layers, self.greedy_drafter, settings)
            skip = tuple(self.search["skip"])
        check_skip(skip, self.n_layers)
        self.resolved_skip: tuple[int, ...] = skip  # the layers the draft skips (what `auto`/`alternate` chose)
        self.view = LoadedModel(skip_view(target.model, skip), target.tokenizer, target.artifact)

    def manifest(self) -> dict[str, Any]:
        """The layers the draft skipped, and with `auto` the search that chose them."""
        out: dict[str, Any] = {"skip_layers": list(self.resolved_skip), "layers": self.n_layers}
        if self.search is not None:
            out["search"] = self.search | {"cache": portable(layerskip_search.cache_path(self.target))}
        return out

    def max_step_tokens(self) -> int:
        return 1 + self.options.num_draft

    def kept(self, skip: tuple[int, ...]) -> list[int]:
        return [i for i in range(self.n_layers) if i not in skip]

    def greedy_drafter(self, skip: tuple[int, ...]) -> Drafter:
        """A greedy drafter skipping `skip` (the `auto` search times these)."""
        view = LoadedModel(skip_view(self.target.model, skip), self.target.tokenizer, self.target.artifact)
        return LayerSkipDrafter(view, self.kept(skip), self.options.num_draft, self.options.stop_threshold, None)

    def drafter(self) -> Drafter:
        o = self.options
        return LayerSkipDrafter(self.view, self.kept(self.resolved_skip), o.num_draft, o.stop_threshold, self.sampler)
