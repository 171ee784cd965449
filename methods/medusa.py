"""`medusa`: Medusa heads draft a static token tree from the target's last hidden state (Cai et al. 2024, "Medusa:
Simple LLM Inference Acceleration Framework with Multiple Decoding Heads"; FasterDecoding/Medusa).

After every target forward the drafter keeps the hidden state of the last committed row (the row whose LM-head
output is the pending token). Head k on it gives the candidates k + 1 tokens after the pending token; the tree is
a Medusa choices list (medusa/model/medusa_choices.py), each node a path of ranks: node (0, 2) is head 1's rank-2
token under head 0's rank-0 token. Nodes are ordered as `generate_medusa_buffers` sorts them (by depth, then
ranks), and the node -> (head, rank) table is built once, so a step is one top-k over the heads' logits and one
gather (`generate_candidates`). Nodes deeper than the heads or the step's budget are dropped, as are ranks past
the vocabulary. The first step (the prompt, no hidden state yet) is an autoregressive step, as the reference's
`initialize_medusa` forward.

Verification is the engine's (tree attention, one forward). Greedy: the longest path matching the target's argmax
(lossless). Sampling: the nodes are the heads' deterministic top-k and the engine's rejection sampling with
one-hot drafts (`probs=None`: accept x with probability p(x), else p(x) = 0 and renormalise) gives exactly the
target's distribution. `--typical` replaces it by Medusa's typical acceptance (`evaluate_posterior`, sampling
'typical', fast=True, the reference default): a node is accepted when its target probability exceeds
min(posterior_threshold, posterior_alpha * exp(-entropy)); the longest accepted path wins (ties: the highest
likelihood) and the next token is the target's argmax; probabilities are the sampler's (temperature, and top-k /
top-p if set: the reference has none). That is LOSSY (the output is not the target's distribution;
it is even deterministic); greedy decoding ignores it, as the reference's temperature-0 path does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options, option
from methods import draft_vocab
from methods.base import DraftingMethod, register
from methods.decode import Draft, Drafter, Sampler
from methods.medusa_model import MedusaHeads, heads_folder, load_heads

# medusa_choices.py, one node a word of rank digits: "01" is [0, 1]. mc_sim_7b_63 is the reference's default
# (`medusa_generate` falls back to it); vicuna_7b_stage2 is what it picks for Vicuna-7B heads.
_MC_SIM_7B_63 = (
    "0 00 1 01 2 000 10 02 3 03 4 04 20 05 001 5 06 6 07 010 11 7 08 002 30 09 8 9 100 020 12 003 40 21 004 005 "
    "0000 011 006 030 50 13 007 008 009 60 040 14 70 012 200 31 22 80 050 15 101 021 90 060 0001 16 070"
)
_VICUNA_7B_STAGE2 = (
    "0 00 1 01 000 10 2 02 001 03 3 010 20 4 002 04 11 100 0000 5 003 05 020 30 011 06 6 07 004 40 12 08 7 030 "
    "0001 005 21 006 101 0010 200 50 09 012 8 040 021 13 007 0002 008 110 0100 60 9 013 0003 102 050 31 0020 70 14"
)
TREES: dict[str, list[tuple[int, ...]]] = {
    "mc_sim_7b_63": [tuple(map(int, word)) for word in _MC_SIM_7B_63.split()],
    "vicuna_7b_stage2": [tuple(map(int, word)) for word in _VICUNA_7B_STAGE2.split()],
}
# CPU-sized trees: the first n nodes of the default, in its own order (most likely accepted first; each is a tree)
TREES |= {f"mc{n}": TREES["mc_sim_7b_63"][:n] for n in (8, 16, 24)}


@dataclass
class _Template:
    """A tree cut to a depth: the Draft's fixed structure and the node -> (head, rank) index."""

    head: torch.Tensor  # (nodes,) which head's top-k holds each node's token
    rank: torch.Tensor  # (nodes,) its rank there
    draft: Draft  # tokens are placeholders; paths, positions and visibility are shared by every step
    parent_row: torch.Tensor  # (nodes,) the step row whose output predicts each node: 0 pending, 1 + i node i
    path_matrix: torch.Tensor  # (paths, depth) node indices, padded with `nodes` (typical acceptance)


class MedusaTree:
    """A Medusa choices list fitted to the heads and the vocabulary, cut per depth on demand."""

    def __init__(self, choices: list[tuple[int, ...]], num_heads: int, vocab: int) -> None:
        fitting = {c for c in choices if len(c) <= num_heads and max(c) < vocab}
        self.nodes = sorted(fitting, key=lambda c: (len(c), c))  # generate_medusa_buffers' order
        if any(len(c) > 1 and c[:-1] not in fitting for c in self.nodes):
            raise BenchError("a Medusa tree must hold every node's parent")
        self.depth = max(map(len, self.nodes), default=0)
        self._cuts: dict[int, _Template] = {}

    def cut(self, depth: int) -> _Template:
        """The nodes at most `depth` deep (cached)."""
        if depth not in self._cuts:
            nodes = [c for c in self.nodes if len(c) <= depth]
            index = {c: i for i, c in enumerate(nodes)}
            parents = [index[c[:-1]] if len(c) > 1 else -1 for c in nodes]
            draft = Draft.tree([0] * len(nodes), parents)
            draft.paths.sort()  # depth first, siblings by rank: the engine tests the likeliest child first
            width = max(map(len, draft.paths))
            matrix = torch.tensor([p + [len(nodes)] * (width - len(p)) for p in draft.paths], dtype=torch.long)
            self._cuts[depth] = _Template(
                torch.tensor([len(c) - 1 for c in nodes]),
                torch.tensor([c[-1] for c in nodes]),
                draft,
                torch.tensor(parents) + 1,
                matrix,
            )
        return self._cuts[depth]


def typical_acceptance(draft: Draft, logits: torch.Tensor, rows: dict[int, int], sampler: Sampler,
                       cut: _Template, threshold: float, alpha: float) -> tuple[list[int], int]:  # fmt: skip
    """Medusa's typical acceptance (LOSSY), `draft.verifier`'s signature: the accepted node indices and the next
    token (see the module docstring)."""
    n = len(draft.tokens)
    probs = sampler.probs(logits[torch.tensor([rows[r] for r in range(n + 1)], device=logits.device)]).cpu()
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)
    bar = torch.minimum(torch.full_like(entropy, threshold), torch.exp(-entropy) * alpha)
    node_p = probs[cut.parent_row, torch.tensor(draft.tokens)]
    ok = torch.cat([node_p > bar[cut.parent_row], torch.zeros(1, dtype=torch.bool)])
    lengths = ok[cut.path_matrix].long().cumprod(1).sum(1)
    best = int(lengths.max())
    path = 0
    if best:
        logp = torch.cat([node_p.log(), torch.zeros(1)])[cut.path_matrix[:, :best]].sum(1)
        path = int(torch.where(lengths == best, logp, torch.tensor(float("-inf"))).argmax())
    accepted = cut.path_matrix[path, :best].tolist()
    row = accepted[-1] + 1 if accepted else 0
    return accepted, int(logits[rows[row]].argmax())


class MedusaDrafter:
    """Drafts the tree's tokens from the heads' top-k on the last committed hidden state (see the docstring)."""

    reads_hidden = True
    draft_forwards = 0  # the heads run inside the step (no draft model forward)

    def __init__(self, heads: MedusaHeads, tree: MedusaTree, sampler: Sampler | None = None,
                 typical: tuple[float, float] | None = None) -> None:  # fmt: skip
        self.heads = heads
        self.tree = tree
        self.typical = typical if sampler is not None else None  # (posterior_threshold, posterior_alpha)
        self.hidden: torch.Tensor | None = None  # the last committed row's hidden state
        self.committed = 0  # positions whose hidden states arrived (context minus the pending token)

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden[-1]
        self.committed += len(hidden)

    def propose(self, context: list[int], budget: int) -> Draft | None:
        depth = min(self.tree.depth, budget)
        if self.hidden is None or depth < 1 or self.committed != len(context) - 1:
            return None
        cut = self.tree.cut(depth)
        with torch.inference_mode():
            logits = self.heads(self.hidden, count=depth)
        top = logits.topk(int(cut.rank.max()) + 1, dim=-1).indices.cpu()
        tokens = top[cut.head, cut.rank].tolist()
        draft = Draft(tokens, cut.draft.paths, cut.draft.positions, cut.draft.visible)
        if self.typical is not None:
            draft.verifier = partial(typical_acceptance, cut=cut, threshold=self.typical[0], alpha=self.typical[1])
        return draft

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        """Nothing to learn: the tree is static."""


@dataclass(frozen=True)
class MedusaOptions(Options):
    draft_heads: str | None = option(
        None,
        "trained heads: a folder (FasterDecoding/Medusa layout: medusa_lm_head.pt or .safetensors + config.json) "
        "or a hub id (e.g. FasterDecoding/medusa-vicuna-7b-v1.3); `bench train medusa` writes one",
        label="heads",
    )
    medusa_tree: str = option(
        "mc_sim_7b_63",
        "Medusa choices tree: mc_sim_7b_63 (the reference default, 63 nodes), vicuna_7b_stage2 (the reference's "
        "pick for Vicuna-7B heads), mc8/mc16/mc24 (the default's first n nodes: CPU-sized)",
        choices=tuple(TREES),
        label="tree",
    )
    typical: bool = option(
        False,
        "sampling only: Medusa's typical acceptance instead of exact rejection sampling (LOSSY: the output is not "
        "the target's distribution)",
    )
    posterior_threshold: float = option(0.09, "typical acceptance: the probability threshold epsilon (reference 0.09)",
                                        min=0.0, max=1.0, label="eps")  # fmt: skip
    posterior_alpha: float = option(0.3, "typical acceptance: the entropy factor alpha (reference 0.3)", min=0.0,
                                    label="alpha")  # fmt: skip
    draft_vocab: int | None = option(None, draft_vocab.HELP, min=1)

    @classmethod
    def unread(cls, values: dict[str, object]) -> set[str]:
        return set() if values.get("typical") else {"posterior_threshold", "posterior_alpha"}


@register
class Medusa(DraftingMethod):
    name = "medusa"
    description = (
        "Medusa (Cai et al. 2024, Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding "
        "Heads): trained heads draft a static tree, verified in one forward (lossless; --typical: lossy)"
    )
    family = "medusa"
    Options = MedusaOptions
    compilable = False
    quantizable = False  # the heads read the target's LM head weight

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: MedusaOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        o = self.options
        if o.draft_heads is None:
            raise BenchError("medusa needs trained heads: pass --draft-heads DIR|HUB-ID, or train them with "
                             "`bench train medusa --model M --out DIR`")  # fmt: skip
        self.heads = load_heads(o.draft_heads, target)
        if o.draft_vocab is not None:  # each head's LM head keeps the draft vocabulary's rows
            ids = draft_vocab.frequent_tokens(heads_folder(o.draft_heads), o.draft_vocab, self.heads.vocab_size)
            for head in self.heads.medusa_head:
                head[-1] = draft_vocab.SubsetHead(head[-1], ids)
        self.tree = MedusaTree(TREES[o.medusa_tree], self.heads.num_heads, self.heads.vocab_size)

    def max_step_tokens(self) -> int:
        return 1 + len(self.tree.nodes)

    def manifest(self) -> dict[str, object]:
        return {"medusa_heads": self.heads.source}

    def drafter(self) -> Drafter:
        o = self.options
        typical = (o.posterior_threshold, o.posterior_alpha) if o.typical else None
        return MedusaDrafter(self.heads, self.tree, self.sampler, typical)
