"""The engine's hidden-state hook (`reads_hidden`): what Medusa and EAGLE drafters read after every forward."""

from __future__ import annotations

import torch

from core.timing import Timer
from methods.ar import Autoregressive
from methods.decode import Draft, StopRule, verify_loop


class _Recorder:
    """Drafts a tree of the target's own recent tokens (some paths accepted, some not) and records the hidden
    states the engine hands over."""

    reads_hidden = True
    draft_forwards = 0

    def __init__(self, reference: list[int]) -> None:
        self.reference = reference  # the greedy continuation: drafting from it makes some paths accepted
        self.rows: list[torch.Tensor] = []
        self.steps = 0

    def propose(self, context: list[int], budget: int) -> Draft | None:
        self.steps += 1
        if self.steps % 3 == 0 or budget < 2:
            return None  # an AR step now and then: its rows must arrive too
        done = len(context) - self.n_prompt
        right = self.reference[done : done + 2]
        wrong = [(t + 1) % 300 for t in right]
        return Draft.tree([right[0], right[1], wrong[0]], [-1, 0, -1])

    def observe(self, draft: Draft, predicted: list[int], accepted: list[int]) -> None:
        pass

    def observe_hidden(self, hidden: torch.Tensor) -> None:
        self.rows.append(hidden)


def test_hidden_rows_are_the_committed_positions_of_a_full_forward(tiny):
    ids = tiny.tokenizer("the quick brown fox")["input_ids"]
    reference = Autoregressive(tiny, None).generate(ids, StopRule(30), Timer()).tokens
    drafter = _Recorder(reference + [0, 0])
    drafter.n_prompt = len(ids)
    result = verify_loop(tiny.model, ids, StopRule(30), Timer(), drafter)
    assert result.tokens == reference
    assert max(result.accepted) > 1  # accepted draft tokens were among the rows
    got = torch.cat(drafter.rows)
    with torch.inference_mode():
        full = tiny.model.get_decoder()(torch.tensor([ids + reference[:-1]])).last_hidden_state[0]
    # every committed position but the last (still pending when the generation ends) got its row, in order
    assert got.shape == full.shape
    torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4)
