"""`token-recycling` (Luo et al. 2024, "Turning Trash into Treasure: Accelerating Inference of Large Language
Models with Token Recycling").

As the reference code (Luowaterbi/TokenRecycling, `evaluation/inference_recycling.py`): an adjacency matrix of
shape (vocab, k), all zeros at the start, holds for every vocabulary entry the top-k next tokens the target last
predicted after it. Each step drafts a static token tree from the pending token by breadth-first search on the
matrix: a template node given by its path of ranks (r1, ..., rd) holds matrix[its parent's token][rd], the root
being the pending token. The pending token and the tree run through ONE target forward with tree attention; then
every input row updates the matrix: matrix[token] = the top-k of the logits at that token's position (the rows of
rejected branches too). Where a token appears twice, the later row wins (the reference's single indexed assignment
leaves that unspecified). The matrix lives on the method instance, so it persists across the prompts of a run,
warm-up generations included, as in the reference (its matrix is global to the evaluation, warm-up too);
`reset_per_prompt` clears it before every generation. Duplicate siblings are kept, as in the reference.

Differences from the reference: the engine also runs the update of the last step of a generation (the reference
stops before it), and the prompt's forward is merged with the first tree step (the reference prefills first;
the prompt's rows update nothing in either). Sampling: the reference is greedy only; here the engine's rejection
sampling over the tree keeps the target's distribution exactly.

Tree shapes (`tree`): `paper` is the reference's template "2.2.2" (80 nodes, depth 6: 8/21/25/15/8/3 per level).
`cpuN` is the paper tree's N most accepted nodes (`RANKED`: how often the accepted path went through each node,
smollm2-135m, greedy, Spec-Bench prompts, persistent matrix); a node is accepted at most as often as its parent,
so each is a subtree of the paper's tree. The default `cpu8`: with that measurement (tau 1.68 / 1.77 / 1.82 / 1.91
for cpu8 / cpu16 / cpu24 / paper) and the stored smollm2-135m CPU cost curve (a 9-, 17-, 25-, 81-token forward
costs about 1.6x, 1.8x, 2.1x, 4.3x a 1-token one), the smallest tree predicts the best speedup on a CPU. A
smaller tree also refreshes fewer matrix rows per step, so it warms up more slowly: from a cold matrix over
Spec-Bench's first question of each group (48 new tokens), tau was 1.23 / 1.42 / 1.38 for cpu8 / cpu16 / cpu24.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

import torch

from core.errors import BenchError
from core.models import LoadedModel
from core.options import Options, option
from methods.base import DraftingMethod, register
from methods.decode import Draft, Sampler

Path = tuple[int, ...]

PAPER: tuple[Path, ...] = (
    *((i,) for i in range(8)),
    *((0, i) for i in range(8)), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (4, 0),
    (5, 0), (6, 0), (7, 0),
    *((0, 0, i) for i in range(8)), (0, 1, 0), (0, 1, 1), (0, 1, 2), (0, 2, 0), (0, 2, 1), (0, 3, 0), (0, 4, 0),
    (0, 5, 0), (0, 6, 0), (0, 7, 0), (1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (5, 0, 0),
    *((0, 0, 0, i) for i in range(5)), (0, 0, 1, 0), (0, 0, 1, 1), (0, 0, 2, 0), (0, 0, 3, 0), (0, 0, 4, 0),
    (0, 1, 0, 0), (0, 2, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0), (3, 0, 0, 0),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 0, 2), (0, 0, 0, 1, 0), (0, 0, 0, 2, 0), (0, 0, 1, 0, 0),
    (0, 1, 0, 0, 0), (1, 0, 0, 0, 0),
    (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (0, 0, 0, 1, 0, 0),
)  # fmt: skip

# The paper tree's nodes by how often the accepted path went through them (the count after each): smollm2-135m,
# fp32, greedy, the first question of each of Spec-Bench's 13 categories, 64 new tokens, one matrix for all of
# them after a 16-token warm-up (419 steps; ties: shallower, then the paper's order). Counts under ~10 are noise.
RANKED: tuple[Path, ...] = (
    (0,), (0, 0), (1,), (0, 0, 0), (1, 0), (2,), (0, 0, 0, 0), (3,),  # 114 47 39 30 17 14 12 11
    (5,), (4,), (0, 1), (0, 3), (0, 0, 0, 0, 0), (7,), (0, 2), (6,),  # 7 5 5 5 5 4 4 3
    (1, 1), (2, 0), (0, 0, 2), (0, 1, 0), (0, 0, 0, 3), (0, 4), (0, 6), (2, 1),  # 3 3 3 3 3 2 2 2
)  # fmt: skip

TREES: dict[str, tuple[Path, ...]] = {
    "paper": PAPER,
    **{f"cpu{n}": tuple(sorted(RANKED[:n], key=len)) for n in (8, 16, 24)},  # level by level
}


@dataclass(frozen=True)
class Template:
    """A tree template in BFS order: each node's parent index (-1: the root), its rank among the parent's
    candidates, and where each depth level starts and ends."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    depths: tuple[int, ...]

    @classmethod
    def of(cls, paths: tuple[Path, ...]) -> Template:
        index = {path: i for i, path in enumerate(paths)}
        if len(index) != len(paths) or list(map(len, paths)) != sorted(map(len, paths)):
            raise ValueError("a tree template lists distinct paths, level by level")
        if any(len(p) > 1 and index.get(p[:-1], len(paths)) > i for i, p in enumerate(paths)):
            raise ValueError("every template node's parent comes before it")
        parents = tuple(index[p[:-1]] if len(p) > 1 else -1 for p in paths)
        return cls(parents, tuple(p[-1] for p in paths), tuple(len(p) for p in paths))

    def size(self, budget: int) -> int:
        """Nodes no deeper than `budget` (a prefix: the nodes are in BFS order)."""
        return bisect.bisect_right(self.depths, budget)

    def levels(self, n: int) -> tuple[tuple[int, int], ...]:
        """(start, end) of each depth level among the first `n` nodes."""
        starts = [i for i in range(n) if i == 0 or self.depths[i] != self.depths[i - 1]]
        return tuple(zip(starts, [*starts[1:], n], strict=True))


@functools.lru_cache(maxsize=64)
def template(name: str) -> Template:
    return Template.of(TREES[name])


@functools.lru_cache(maxsize=64)
def layout(name: str, n: int) -> tuple[Draft, tuple[tuple[int, int], ...]]:
    """The tree structure (paths, positions, attention; dummy tokens) of the first `n` nodes of a template, and
    where its depth levels start and end."""
    t = template(name)
    return Draft.tree([0] * n, list(t.parents[:n])), t.levels(n)


class RecyclingDrafter:
    """Drafts the template's tree from a shared adjacency matrix and refreshes the matrix from every forward."""

    draft_forwards = 0

    def __init__(self, matrix: torch.Tensor, tree: str) -> None:
        self.matrix = matrix  # (vocab, topk) int64, shared by the drafters of a run
        self.topk = matrix.shape[1]  # the engine puts the target's top-`topk` ids per step row in `draft.top`
        self.tree = tree
        t = template(tree)
        if max(t.ranks) >= self.topk:
            raise ValueError(f"tree {tree} reads rank {max(t.ranks)}; the matrix keeps {self.topk}")
        self.parents = torch.tensor([p + 1 for p in t.parents])  # into [root, *nodes]
        self.ranks = torch.tensor(t.ranks)
        self.ids = torch.zeros(0, dtype=torch.long)  # the last proposal's [pending token, *tree tokens]

    def propose(self, context: list[int], budget: int) -> Draft:
        shape, levels = layout(self.tree, template(self.tree).size(budget))
        ids = torch.empty(1 + len(shape.tokens), dtype=torch.long)
        ids[0] = context[-1]
        for start, end in levels:  # BFS, one level at a time: a node's token = matrix[parent's token][rank]
            ids[1 + start : 1 + end] = self.matrix[ids[self.parents[start:end]], self.ranks[start:end]]
        self.ids = ids
        return Draft(ids[1:].tolist(), shape.paths, shape.positions, shape.visible)

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        ids, top = self.ids, draft.top
        assert top is not None and len(top) == len(ids)
        computed = top[:, 0] >= 0
        later = ((ids[:, None] == ids[None, :]) & computed).triu(1).any(1)  # the token's last computed row wins
        rows = computed & ~later
        self.matrix[ids[rows]] = top[rows]


@dataclass(frozen=True)
class TokenRecyclingOptions(Options):
    tree: str = option(
        "cpu8",
        "token-recycling: the draft tree template, paper (the reference's 80-node tree 2.2.2, for GPUs) or "
        "cpu8/cpu16/cpu24 (its 8/16/24 most accepted nodes, CPU-sized)",
        choices=tuple(TREES),
    )
    topk: int = option(8, "next-token candidates kept per vocabulary entry (the reference's --output-id-topk 8)",
                       min=1, label="k")  # fmt: skip
    reset_per_prompt: bool = option(
        False, "clear the adjacency matrix before each generation (the reference keeps it for the whole run)"
    )

    def check(self, owner: str) -> None:
        rank = max(template(self.tree).ranks)
        if rank >= self.topk:
            raise BenchError(f"--tree {self.tree} reads candidate rank {rank}: --topk must be at least {rank + 1}")


@register
class TokenRecycling(DraftingMethod):
    name = "token-recycling"
    description = (
        "Token Recycling (Luo et al. 2024, Turning Trash into Treasure: Accelerating Inference of Large Language "
        "Models with Token Recycling): top-k adjacency matrix, static BFS draft tree, one forward (lossless)"
    )
    family = "token recycling"
    Options = TokenRecyclingOptions

    def __init__(self, target: LoadedModel, sampler: Sampler | None, options: TokenRecyclingOptions | None = None,
                 draft: LoadedModel | None = None) -> None:  # fmt: skip
        super().__init__(target, sampler, options, draft)
        vocab = target.model.get_output_embeddings().weight.shape[0]
        if self.options.topk > vocab:
            raise BenchError(f"--topk {self.options.topk} exceeds the model's vocabulary ({vocab})")
        self.matrix = torch.zeros(vocab, self.options.topk, dtype=torch.long)  # persists across generations

    def max_step_tokens(self) -> int:
        return 1 + len(TREES[self.options.tree])

    def drafter(self) -> RecyclingDrafter:
        if self.options.reset_per_prompt:
            self.matrix.zero_()
        return RecyclingDrafter(self.matrix, self.options.tree)
