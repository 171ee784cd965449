"""The statistics of a summary row: the speedup's interval, repeats, acceptance per draft position."""

from __future__ import annotations

import numpy as np
import pytest

from bench.records import acceptance, aggregate, bootstrap_ratio


def _record(pid: str, tokens: int, seconds: float, repeat: int = 1, **extra) -> dict:
    return {"prompt_id": pid if repeat == 1 else f"{pid}:r{repeat}", "sample_id": pid, "turn": 1, "repeat": repeat,
            "new_tokens": tokens, "total_s": seconds, "target_forwards": tokens, "tokens_per_s": tokens / seconds,
            "ttft_s": 0.1, "tpot_s": 0.01} | extra  # fmt: skip


def test_interval_is_of_the_ratio_of_totals():
    # one long prompt dominates the totals (speedup 0.5 there), many short ones are 2x faster: the mean of the
    # per-sample ratios is far from the ratio of totals, and its interval would miss the headline
    method = [_record("long", 1000, 20.0)] + [_record(f"s{i}", 10, 0.5) for i in range(11)]
    baseline = [_record("long", 1000, 10.0)] + [_record(f"s{i}", 10, 1.0) for i in range(11)]
    row = aggregate(method, baseline)
    assert row["speedup"] == pytest.approx((1110 / 25.5) / (1110 / 21.0))
    assert row["speedup_mean"] > 1.8  # the mean per-sample ratio: another statistic
    assert row["speedup_ci_low"] <= row["speedup"] <= row["speedup_ci_high"]
    assert row["paired_prompts"] == 12


def test_bootstrap_ratio_is_exact_for_identical_prompts():
    units = np.array([[10, 1.0, 10, 2.0]] * 5)
    assert bootstrap_ratio(units) == pytest.approx((2.0, 2.0))


def test_repeats_pair_by_repeat_and_resample_prompts():
    method = [_record(p, 10, s, repeat=k) for k, s in ((1, 1.0), (2, 0.5), (3, 1.0)) for p in ("a", "b")]
    baseline = [_record(p, 10, 2.0, repeat=k) for k in (1, 2, 3) for p in ("a", "b")]
    row = aggregate(method, baseline)
    per_repeat = [2.0, 4.0, 2.0]
    assert row["repeats"] == 3 and row["paired_prompts"] == 2 and row["paired_samples"] == 6
    assert row["speedup_repeat_mean"] == pytest.approx(np.mean(per_repeat))
    assert row["speedup_repeat_std"] == pytest.approx(np.std(per_repeat, ddof=1))
    assert row["speedup"] == pytest.approx(60 / 5.0 / (60 / 12.0))
    assert "repeats" not in aggregate(method[:2], baseline)


def test_acceptance_rate_and_per_position():
    # forwards drafting 4, 4, 2 and 0 tokens that committed 5 (all accepted + 1), 2 (one accepted), 1, 1
    records = [_record("a", 9, 1.0, drafted=[4, 4, 2, 0], accepted=[5, 2, 1, 1])]
    out = acceptance(records)
    assert out["acceptance_rate"] == pytest.approx((4 + 1 + 0) / (4 + 4 + 2))
    assert out["acceptance_by_position"] == pytest.approx([2 / 3, 1 / 3, 1 / 2, 1 / 2])
    assert acceptance([_record("a", 3, 1.0, drafted=None, accepted=[1, 1, 1])]) == {}
    assert "acceptance_rate" in aggregate(records) and "acceptance_rate" not in aggregate(
        records[:0] or [_record("b", 1, 1.0)]
    )


def test_paired_bootstrap_of_a_corpus_metric_difference():
    import sacrebleu

    from bench.significance import paired_bootstrap, signature

    refs = [f"the {w} house is small and old ." for w in ("red", "blue", "big", "new", "white", "dark")] * 5
    good = [r.replace(" old", "") for r in refs]  # close to the references
    bad = [r.split(" is ")[0] + " ." for r in refs]  # half of each sentence
    for metric, score in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        test = paired_bootstrap(metric, refs, good, bad, resamples=200)
        assert test["delta"] == pytest.approx(score(good, [refs]).score - score(bad, [refs]).score)
        assert 0 < test["low"] <= test["delta"] <= test["high"] and test["p_not_better"] == 0
        same = paired_bootstrap(metric, refs, good, good, resamples=50)
        assert same["delta"] == same["low"] == same["high"] == 0 and same["p_not_better"] == 1
    mixed = good[:15] + bad[15:]  # better on half the sentences, worse on none: the interval still excludes 0
    assert paired_bootstrap("bleu", refs, mixed, bad, resamples=200)["low"] > 0
    assert "tok:13a" in signature("bleu") and "nrefs:1" in signature("bleu")
    with pytest.raises(ValueError):
        paired_bootstrap("bleu", refs, good[:-1], bad)
