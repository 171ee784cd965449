"""The decode engine shared by every method that calls the model's forward itself.

One loop: repeatedly ask a drafter for candidate tokens (none for autoregressive decoding), run the pending token
(at the first step: the whole prompt, its last token pending) and the candidates through ONE target forward,
verify the candidate paths (greedy: longest path matching the target's argmax; sampling: rejection sampling, so
the output distribution is the target's), commit the accepted path plus one token from the target, and keep only
the committed positions in the KV cache.

Drafters describe their candidates as a `Draft`: a chain (speculative, prompt lookup) needs nothing but tokens;
Lookahead passes several paths plus extra tokens with their own positions and attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from core.errors import BenchError
from core.timing import Timer
from methods import verify
from methods.attention import step_mask
from methods.kvcache import keep, new_cache


@dataclass
class StopRule:
    """When a generation ends: max new tokens, any EOS id, or a stop string in the generated text."""

    max_new_tokens: int
    eos_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    tokenizer: Any = None

    def end(self, tokens: list[int], start: int) -> int | None:
        """Length at which `tokens` ends, looking only at positions from `start` on; None to go on."""
        for i in range(start, len(tokens)):
            if tokens[i] in self.eos_ids or i + 1 >= self.max_new_tokens:
                return i + 1
            if self.stop_strings:
                text = self.tokenizer.decode(tokens[: i + 1])
                if any(s in text for s in self.stop_strings):
                    return i + 1
        return None


@dataclass
class Sampler:
    """Temperature / top-k / top-p sampling with its own seeded generator (reproducible per generation)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.generator.manual_seed(self.seed if seed is None else seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Next-token distribution(s) from logits of shape (..., vocab), in float32."""
        logits = logits.float() / self.temperature
        if self.top_k > 0:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1])).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            sorted_probs = sorted_logits.softmax(-1)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= self.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return logits.softmax(-1)

    def sample(self, probs: torch.Tensor) -> int:
        """Draw one token id from a distribution (on the CPU generator, so runs are reproducible anywhere)."""
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))


@dataclass
class Draft:
    """Tokens to run through the target after the pending token, and the candidate paths among them.

    `paths` are chains of indices into `tokens`; each is a guess for the tokens after the pending one. Extra
    tokens outside every path (Lookahead's window) are computed but never committed. `positions` are offsets
    from the pending token and `visible[i, j]` says whether extra token i attends to extra token j; both None
    means one causal chain at offsets 1..len(tokens). `probs` are the draft's distributions (rows aligned with
    `tokens`) for sampling verification; None means deterministic guesses. `read` lists the tokens outside every
    path whose next-token outputs the drafter reads in `observe` (Lookahead's top window level): the LM head runs
    only on the pending token, the path tokens and these (all tokens when `read` is None).
    """

    tokens: list[int]
    paths: list[list[int]]
    positions: list[int] | None = None
    visible: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    read: list[int] | None = None
    top: torch.Tensor | None = None  # set by the engine for a drafter with `topk` (see Drafter)
    verifier: Any = None  # sampling only: replaces verify.sampling (same signature), e.g. Medusa's lossy typical

    @classmethod
    def chain(cls, tokens: list[int], probs: torch.Tensor | None = None) -> Draft:
        return cls(tokens, [list(range(len(tokens)))], probs=probs)

    @classmethod
    def tree(cls, tokens: list[int], parents: list[int]) -> Draft:
        """A token tree: node i holds `tokens[i]` under node `parents[i]` (-1: under the pending token; a parent
        comes before its children). Each node sits at its depth and sees its ancestors; every root-to-leaf chain
        is a candidate path."""
        n = len(tokens)
        visible = torch.eye(n, dtype=torch.bool)
        depth = [0] * n
        for i, parent in enumerate(parents):
            if parent >= 0:
                visible[i] |= visible[parent]
                depth[i] = depth[parent] + 1
        leaves = sorted(set(range(n)) - set(parents))
        paths = [visible[leaf].nonzero().flatten().tolist() for leaf in leaves]
        return cls(tokens, paths, [d + 1 for d in depth], visible)


class Drafter(Protocol):
    """A source of candidates: prompt lookup, a draft model, a Lookahead window, ...

    A drafter with a class attribute `reads_hidden = True` (Medusa, EAGLE) also gets, after every target forward,
    `observe_hidden(hidden)`: the target's last hidden state (after its final norm, the LM head's input) at every
    position that forward committed: the uncached input tokens (the prompt at the first step), the pending token,
    then the accepted draft tokens, in order (rows, hidden size)."""

    draft_forwards: int

    def propose(self, context: list[int], budget: int) -> Draft | None:
        """Candidates for the tokens after `context` (prompt + committed tokens, the pending one last).
        No path needs to be longer than `budget`. None: nothing to propose (an autoregressive step)."""
        ...

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        """After verification: the target's argmax after the pending token and after each draft token
        (`predicted[0]`, `predicted[1 + i]`; -1 for a token whose output was not computed: see `Draft.read`), and
        the indices of the accepted draft tokens. A drafter with a class attribute `topk` > 0 also finds the
        target's top-`topk` token ids per step row in `draft.top` (rows as in `predicted`; -1 where not computed)."""
        ...


@dataclass
class LoopResult:
    tokens: list[int]
    accepted: list[int]  # tokens each target forward committed
    drafted: list[int]  # draft tokens each forward could accept (its longest candidate path; 0: no draft)
    step_tokens: list[int]  # query tokens each forward ran (the prompt's uncached tokens + pending + every draft token)


def _attention(
    draft: Draft, cached: int, device: torch.device, model: Any = None, cache: Any = None, prefix: int = 0
) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
    """Position ids and the additive 4D attention mask for [`prefix` tokens, pending, *draft.tokens] after
    `cached` positions (the prefix: the prompt's uncached tokens, a causal chain before the pending token).

    With the model and its cache, the mask fits every layer type (a {layer type: mask} dict for models mixing
    full and sliding-window layers; see methods.attention); without, one full-attention mask in float32."""
    n, m = len(draft.tokens), prefix + 1
    offsets = torch.tensor(list(draft.positions or range(1, n + 1)), dtype=torch.long)
    positions = cached + torch.cat([torch.arange(m), prefix + offsets]).to(device)
    visible = torch.zeros(m + n, m + n, dtype=torch.bool, device=device)
    visible[:, :m] = torch.ones(m + n, m, dtype=torch.bool).tril()  # the prefix and pending token: causal, seen by all
    chain = torch.ones(n, n, dtype=torch.bool).tril()
    visible[m:, m:] = (draft.visible if draft.visible is not None else chain).to(device)
    return positions.unsqueeze(0), step_mask(visible, positions, cached, model, cache)


class Target(Protocol):
    """How the engine runs the target model: a cache per generation, one forward per step, the rollback.
    `EagerTarget` calls the model's forward on a growing DynamicCache; methods.compiled runs compiled forwards."""

    def start(self, prompt_len: int, max_new_tokens: int) -> None:
        """A fresh (empty) cache for a generation of at most `max_new_tokens` after a prompt of `prompt_len`."""
        ...

    def forward(self, inputs: list[int], cached: int, draft: Draft | None) -> tuple[torch.Tensor, list[int] | None]:
        """One forward of `inputs` (uncached tokens, the pending one last) and the draft's tokens after `cached`
        positions. Returns logits rows and the step rows they belong to (0: the pending token, 1 + i: draft token
        i; None: all of them in order). Without a draft: the pending token's row alone."""
        ...

    def keep(self, pending: int, n_step: int, accepted: list[int]) -> None:
        """Keep the pending token (at position `pending`) and the accepted draft positions (indices into the
        draft of `n_step` tokens), in order; drop the rest."""
        ...


class EagerTarget:
    """The model's own forward on our DynamicCache (methods.kvcache): the LM head runs only on the rows read.
    With `hidden`, the decoder and the LM head run separately and the last forward's hidden states are kept."""

    def __init__(self, model: Any, hidden: bool = False) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache: Any = None
        self.keeps_hidden = hidden
        self.hidden: torch.Tensor | None = None  # (step rows, hidden size) of the last forward, with `hidden`

    def start(self, prompt_len: int, max_new_tokens: int) -> None:
        self.cache = new_cache(self.model)

    def forward(self, inputs: list[int], cached: int, draft: Draft | None) -> tuple[torch.Tensor, list[int] | None]:
        if draft is None:
            return self._logits(torch.tensor([inputs], device=self.device), 1), None
        prefix = len(inputs) - 1
        step = torch.tensor([[*inputs, *draft.tokens]], device=self.device)
        read = verify.read_rows(draft)
        rows = 1 + len(draft.tokens) if read is None else torch.tensor([prefix + r for r in read], device=self.device)
        if draft.positions is None and draft.visible is None:
            return self._logits(step, rows), read
        positions, mask = _attention(draft, cached, self.device, self.model, self.cache, prefix)
        return self._logits(step, rows, position_ids=positions, attention_mask=mask), read

    def _logits(self, ids: torch.Tensor, rows: int | torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The logits of `rows` (the last `rows` if an int) of one forward of `ids` on the cache."""
        if not self.keeps_hidden:
            return self.model(ids, past_key_values=self.cache, logits_to_keep=rows, **kwargs).logits[0]
        self.hidden = self.model.get_decoder()(ids, past_key_values=self.cache, **kwargs).last_hidden_state[0]
        return self.model.get_output_embeddings()(self.hidden[-rows:] if isinstance(rows, int) else self.hidden[rows])

    def committed_hidden(self, n_inputs: int, accepted: list[int]) -> torch.Tensor:
        """The last forward's hidden states at the committed positions: the `n_inputs` input tokens, then the
        accepted draft tokens (indices into the draft)."""
        assert self.hidden is not None
        return torch.cat([self.hidden[:n_inputs], self.hidden[n_inputs + torch.tensor(accepted, dtype=torch.long)]])

    def keep(self, pending: int, n_step: int, accepted: list[int]) -> None:
        keep(self.cache, pending, n_step, accepted)


def _verify_step(
    target: Target, inputs: list[int], cached: int, draft: Draft, sampler: Sampler | None, topk: int = 0
) -> tuple[list[int], list[int], int]:
    """One target forward over `inputs` (uncached tokens, the pending one last) and the draft; keeps the
    accepted positions in the cache. Returns the target's argmax per step row, the accepted indices, the next token.
    With `topk`, `draft.top` gets the top-`topk` token ids per step row."""
    logits, read = target.forward(inputs, cached, draft)
    argmax = logits.argmax(-1).tolist()
    if topk:
        top = logits.topk(topk, dim=-1).indices.cpu()
        draft.top = (
            top
            if read is None
            else torch.full((len(draft.tokens) + 1, topk), -1).index_copy_(0, torch.tensor(read), top)
        )
    predicted = argmax if read is None else verify.scatter(argmax, read, len(draft.tokens) + 1)
    if sampler is None:
        path = verify.greedy(draft, predicted)
        following = predicted[path[-1] + 1 if path else 0]
    else:
        index = dict(zip(read, range(len(read)), strict=True)) if read is not None else verify.Identity()
        path, following = (draft.verifier or verify.sampling)(draft, logits, index, sampler)
    target.keep(cached + len(inputs) - 1, len(draft.tokens), path)
    return predicted, path, following


@torch.inference_mode()
def verify_loop(
    model: Any,
    prompt_ids: list[int],
    stop: StopRule,
    timer: Timer,
    drafter: Drafter | None = None,
    sampler: Sampler | None = None,
    target: Target | None = None,
) -> LoopResult:
    """Decode with the target model, verifying `drafter`'s candidates (no drafter: autoregressive decoding).

    The first forward runs the prompt (its last token pending) together with the first draft, as transformers'
    assisted generation and the Lookahead reference do. Greedy without a sampler, rejection sampling with one.
    Marks `timer` after every target forward; returns the new tokens, how many tokens each forward committed and
    how many draft tokens it could have accepted. `target` runs the forwards (default: the model's eager forward).
    """
    reads_hidden = getattr(drafter, "reads_hidden", False)
    target = target if target is not None else EagerTarget(model, hidden=reads_hidden)
    if reads_hidden and not getattr(target, "keeps_hidden", False):
        raise BenchError("this method reads the target's hidden states: it runs on the eager forward only")
    target.start(len(prompt_ids), stop.max_new_tokens)
    timer.start()
    tokens: list[int] = []
    accepted_counts: list[int] = []
    drafted: list[int] = []
    step_tokens: list[int] = []
    end = None
    while end is None:
        inputs = tokens[-1:] or prompt_ids  # the uncached tokens, the pending one last
        cached = len(prompt_ids) + len(tokens) - len(inputs)
        budget = stop.max_new_tokens - len(tokens) - 1
        draft = drafter.propose(prompt_ids + tokens, budget) if drafter is not None and budget > 0 else None
        path: list[int] = []
        if not draft or not draft.tokens:
            logits = target.forward(inputs, cached, None)[0][-1]
            new = [int(logits.argmax()) if sampler is None else sampler.sample(sampler.probs(logits))]
        else:
            topk = getattr(drafter, "topk", 0)
            predicted, path, following = _verify_step(target, inputs, cached, draft, sampler, topk)
            drafter.observe(draft, predicted, path)
            new = [draft.tokens[i] for i in path] + [following]
        if reads_hidden:
            drafter.observe_hidden(target.committed_hidden(len(inputs), path))
        start = len(tokens)
        tokens.extend(new)
        accepted_counts.append(len(new))
        drafted.append(max(map(len, draft.paths), default=0) if draft else 0)
        step_tokens.append(len(inputs) + (len(draft.tokens) if draft else 0))
        timer.mark()
        end = stop.end(tokens, start)
    accepted_counts[-1] -= len(tokens) - end
    return LoopResult(tokens[:end], accepted_counts, drafted, step_tokens)
