"""`suffix`: SuffixDecoding (Oliaro et al. 2024, "SuffixDecoding: A Model-Free Approach to Speeding Up Large
Language Model Inference").

As the reference code (snowflakedb/ArcticInference, `arctic_inference/suffix_decoding/cache.py`,
`SuffixDecodingCache`, the C++ `SuffixTree` ported in methods.suffix_tree): two suffix trees, a per-prompt one over
the prompt and the generation's own output, and a global one over the outputs of the run's generations (this
one's included), which lives on the method instance. Both grow incrementally with the committed tokens: before each
step the drafter appends the tokens committed since its last step (the reference's `add_active_response` after
each step); the tokens of a generation's last step go into the global tree when the generation ends. Each step
matches the context's last max_depth tokens against both trees and drafts the most frequent continuation (a path,
or a token tree with `use_tree_spec`) of at most min(max_spec_tokens, budget, max_spec_factor * match length +
max_spec_offset) tokens; the draft with the higher score wins (the per-prompt tree's on ties). No draft: an AR step.

Defaults: max_depth 64 (the reference's `max_tree_depth`), max_spec_factor 1.0, max_spec_offset 0.0 and
min_token_prob 0.1 (the reference's); max_spec_tokens 16 (the reference's vLLM config for `method="suffix"`; the
simulator uses max_depth); a path draft (`SuffixDecodingCache.speculate`'s `use_tree_spec=False`, what both vLLM
integrations run; a tree is the paper's speculation tree, the reference simulator's default). As in the reference,
drafts are not cut at EOS (the engine drops what follows an accepted EOS), and the global tree keeps every output of
the run; unlike the reference's serving setting, the untimed warm-up generation (the run's first prompt) is dropped
from it (`end_warm_up`), so that prompt's timed generation is not drafted from its own earlier output. Repeats of a
prompt (`--repeats`) do draft from its earlier outputs; `global_tree=false` drafts from the per-prompt tree alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from core.models import LoadedModel
from core.options import Options, option
from core.timing import Timer
from methods.base import Decoded, DraftingMethod, register
from methods.decode import Draft, Sampler, StopRule
from methods.suffix_tree import SuffixDraft, SuffixTree


@dataclass(frozen=True)
class SuffixOptions(Options):
    max_depth: int = option(64, "suffix tree depth: longest match + draft (the reference's max_tree_depth 64)",
                            min=2, label="depth")  # fmt: skip
    max_spec_tokens: int = option(16, "most draft tokens per step (the reference's vLLM default 16)", min=1,
                                  label="k")  # fmt: skip
    max_spec_factor: float = option(1.0, "draft tokens per matched token (the reference's 1.0)", min=0.0,
                                    label="factor")  # fmt: skip
    max_spec_offset: float = option(0.0, "draft tokens added to factor * match length (the reference's 0.0)",
                                    label="offset")  # fmt: skip
    min_token_prob: float = option(0.1, "drop draft tokens whose estimated probability is below this (0.1)",
                                   min=0.0, max=1.0, label="min_prob")  # fmt: skip
    use_tree_spec: bool = option(False, "draft a token tree of the most probable continuations (the paper's "
                                 "speculation tree) instead of one path (the reference's default)")  # fmt: skip
    global_tree: bool = option(True, "also draft from the run's earlier outputs (false: the prompt tree alone)",
                               label="global")  # fmt: skip


class SuffixDrafter:
    """One generation's drafter: its per-prompt tree, and its output's sequence `seq_id` in the global tree."""

    draft_forwards = 0

    def __init__(self, options: SuffixOptions, global_tree: SuffixTree | None, seq_id: int) -> None:
        self.options = options
        self.local = SuffixTree(options.max_depth)
        self.global_tree = global_tree
        self.seq_id = seq_id
        self.prompt_len: int | None = None
        self.seen = 0  # context tokens in the per-prompt tree
        self.output = 0  # output tokens in the global tree

    def propose(self, context: list[int], budget: int) -> Draft | None:
        self._update(context)
        limit = min(self.options.max_spec_tokens, budget)
        if limit < 1:
            return None
        draft = self.speculate(context, limit)
        if not draft.tokens:
            return None
        if draft.parents == list(range(-1, len(draft.tokens) - 1)):
            return Draft.chain(draft.tokens)
        return Draft.tree(draft.tokens, draft.parents)

    def speculate(self, context: list[int], limit: int) -> SuffixDraft:
        """The better of the two trees' drafts (the per-prompt one on ties), as `SuffixDecodingCache.speculate`."""
        o = self.options
        args = (limit, o.max_spec_factor, o.max_spec_offset, o.min_token_prob, o.use_tree_spec)
        best = self.local.speculate(context, *args, own=0)
        if self.global_tree is not None:
            other = self.global_tree.speculate(context, *args, own=self.seq_id)
            if other.score > best.score:
                best = other
        return best

    def _update(self, context: list[int]) -> None:
        """Append the tokens committed since the last step: to the per-prompt tree, and the output's to the
        global tree (the prompt of the first call goes to the per-prompt tree alone)."""
        if self.prompt_len is None:
            self.prompt_len = len(context)
        self.local.extend(0, context[self.seen :])
        self.seen = len(context)
        self._add_output(context[self.prompt_len + self.output :])

    def finish(self, output: list[int]) -> None:
        """At the end of the generation: the rest of its `output` into the global tree."""
        self._add_output(output[self.output :])

    def _add_output(self, tokens: list[int]) -> None:
        if self.global_tree is not None and tokens:
            self.global_tree.extend(self.seq_id, tokens)
        self.output += len(tokens)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        pass


@register
class SuffixDecoding(DraftingMethod):
    name = "suffix"
    description = (
        "SuffixDecoding (Oliaro et al. 2024, SuffixDecoding: A Model-Free Approach to Speeding Up Large Language "
        "Model Inference): suffix trees over the prompt and the run's outputs draft frequent continuations (lossless)"
    )
    family = "suffix"
    Options = SuffixOptions

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: SuffixOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        self.global_tree = SuffixTree(self.options.max_depth) if self.options.global_tree else None
        self._seq_ids = itertools.count()
        self._current: SuffixDrafter | None = None

    def end_warm_up(self) -> None:
        """The warm-up decodes the run's first prompt: its output must not draft that prompt's timed generation."""
        self.global_tree = SuffixTree(self.options.max_depth) if self.options.global_tree else None

    def max_step_tokens(self) -> int:
        return 1 + self.options.max_spec_tokens

    def drafter(self) -> SuffixDrafter:
        self._current = SuffixDrafter(self.options, self.global_tree, next(self._seq_ids))
        return self._current

    def generate(self, prompt_ids: list[int], stop: StopRule, timer: Timer) -> Decoded:
        decoded = super().generate(prompt_ids, stop, timer)
        self._current.finish(decoded.tokens)  # the last step's tokens (no step after it appended them)
        return decoded
