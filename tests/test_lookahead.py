"""Lookahead as the reference code (hao-ai-lab/LookaheadDecoding) runs it: warm-up without guesses, a pool of at
most G n-grams per key, at most N-1 tokens committed per step; the improvements only when asked for."""

from __future__ import annotations

import torch

from methods.lookahead import LookaheadDrafter, LookaheadOptions, NgramPool, guess_tree, window_layout

PROMPT = [5, 6, 7, 8, 5, 6, 7, 9, 5, 6]


def step(drafter: LookaheadDrafter, context: list[int], budget: int = 50):
    """One propose/observe round where the target 'predicts' token 1 everywhere and nothing is accepted."""
    draft = drafter.propose(context, budget)
    drafter.observe(draft, [1] * (len(draft.tokens) + 1), [])
    return draft


def test_warm_up_fills_the_levels_before_any_guess_or_ngram():
    options = LookaheadOptions(window=4, ngram=4, guess=3)
    drafter = LookaheadDrafter(options)
    sizes = []
    for k in range(options.ngram - 2):  # N - 2 Jacobi steps fill the upper levels
        draft = step(drafter, PROMPT + [1] * (k + 1))
        sizes.append([len(row) for row in drafter.levels])
        assert draft.paths == [] and drafter.pool.grams == {}
    assert sizes == [[4, 5], [3, 4, 4]]  # W + N - 3 = 5 tokens at first; then level 0 keeps W - 1, the others W
    assert drafter.full
    step(drafter, PROMPT + [1, 1, 1])
    assert drafter.pool.grams  # the first full step inserts each column's n-gram


def test_pool_keeps_g_per_key_least_recent_out():
    pool = NgramPool(2)
    for gram in [(1, 2, 3), (1, 4, 5), (1, 2, 3), (1, 6, 7)]:
        pool.add(gram)
    assert pool.get(1) == [(2, 3), (6, 7)]
    empty = NgramPool(0)
    empty.add((1, 2, 3))
    assert empty.get(1) == []


def test_window_layout_matches_the_reference_mask():
    offsets, where, visible = window_layout((2, 3, 3))  # N = 4, W = 3: level 0 holds columns 1..2
    assert offsets == [1, 2, 1, 2, 3, 2, 3, 4]  # (level l, column c) at offset l + c
    row = where[(2, 1)]  # level 2, column 1 sees level 0 column 1 and column 1 of levels 1 and 2
    assert {k for k in range(8) if visible[row, k]} == {where[(0, 1)], where[(1, 1)], where[(2, 1)]}
    assert {k for k in range(8) if visible[where[(1, 2)], k]} == {where[(0, 1)], where[(0, 2)], where[(1, 2)]}


def full_drafter(**options) -> LookaheadDrafter:
    drafter = LookaheadDrafter(LookaheadOptions(window=3, ngram=4, guess=4, **options))
    while not drafter.full:
        step(drafter, PROMPT)
    for gram in [(6, 7, 8, 9), (6, 7, 8, 5), (6, 2, 3, 4)]:
        drafter.pool.add(gram)
    return drafter


def test_at_most_n_minus_1_tokens_per_step_unless_commit_full():
    reference = full_drafter().propose(PROMPT, 50)
    assert [len(p) for p in reference.paths] == [2, 2, 2]  # N - 2 guess tokens, then the target's token
    assert len(reference.tokens) == 8 + 3 * 3  # the guesses' last tokens are still computed, as in the reference
    full = full_drafter(commit_full=True).propose(PROMPT, 50)
    assert [len(p) for p in full.paths] == [3, 3, 3]
    assert [len(p) for p in full_drafter(commit_full=True).propose(PROMPT, 2).paths] == [2, 2, 2]  # the budget


def test_shared_prefixes_become_one_trie():
    tokens, parents, paths = guess_tree([(7, 8, 9), (7, 8, 5), (2, 3, 4)], start=10, share=True)
    assert tokens == [7, 8, 9, 5, 2, 3, 4] and paths == [[10, 11, 12], [10, 11, 13], [14, 15, 16]]
    assert parents == [-1, 10, 11, 11, -1, 14, 15]
    draft = full_drafter(share_prefixes=True).propose(PROMPT, 50)
    assert len(draft.tokens) == 8 + 7  # the window, then 7 trie nodes instead of 3 chains of 3
    first, second = draft.paths[0], draft.paths[1]
    assert first[:2] == second[:2]
    leaf = second[-1]
    assert draft.positions[leaf] == 2 and torch.equal(
        draft.visible[leaf].nonzero().flatten(), torch.tensor(sorted({second[0], second[1], leaf}))
    )


def test_prompt_pool_only_when_asked():
    assert LookaheadDrafter(LookaheadOptions(ngram=3, prompt_ngrams=False)).pool.grams == {}
    drafter = LookaheadDrafter(LookaheadOptions(ngram=3, prompt_ngrams=True))
    drafter.propose(PROMPT, 50)  # the first step: the prompt, its last token pending
    assert drafter.pool.get(5) == [(6, 7)]
    assert drafter.pool.get(6) == [(7, 8), (7, 9)]
