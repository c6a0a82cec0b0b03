"""Every measure against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from svf.eval import metrics
from svf_kernels import SVFArgumentError

# ---------------------------------------------------------------------------------------------
# likelihood_gap


def test_likelihood_gap_by_hand():
    pos = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]])
    neg = torch.tensor([[-4.0, -4.0, -1.0], [-1.0, -1.0, -1.0]])
    # prompt 0: -2 - (-3) = 1; prompt 1: -2 - (-1) = -1
    assert metrics.likelihood_gap(pos, neg).tolist() == [1.0, -1.0]


@pytest.mark.parametrize("pos, neg, match", [
    (torch.zeros(2, 2), torch.zeros(1, 3), "same P"),
    (torch.zeros(2), torch.zeros(2, 3), "same P"),
    (torch.zeros(2, 0), torch.zeros(2, 3), "at least one"),
    (torch.zeros(2, 2), torch.zeros(2, 0), "at least one"),
    (torch.zeros(0, 2), torch.zeros(0, 3), "no prompts"),
])
def test_likelihood_gap_rejects(pos, neg, match):
    with pytest.raises(ValueError, match=match):
        metrics.likelihood_gap(pos, neg)


# ---------------------------------------------------------------------------------------------
# steerability

# Uneven sweep, so that the least-squares slope is not just (end - start) / 2.
ALPHAS = [0.0, 0.5, 2.0]
GAPS = torch.tensor([
    # p0 rises  p1 flat  p2 falls  p3 ends higher, but falls on the whole
    [0.0,       1.0,     3.0,      0.0],  # alpha 0
    [0.5,       1.0,     2.5,      4.0],  # alpha 0.5
    [2.0,       1.0,     1.0,      1.0],  # alpha 2
])
# p3 by hand: mean alpha 5/6, centred alphas (-5/6, -1/3, 7/6), sum of squares 13/6;
# sum(centred alpha * gap) = -4/3 + 7/6 = -1/6  ->  slope = -1/13.
SLOPES = [1.0, 0.0, -1.0, -1 / 13]


def test_steerability_by_hand():
    s = metrics.steerability(ALPHAS, GAPS)
    assert s["slope"].tolist() == pytest.approx(SLOPES, abs=1e-6)
    assert s["mean_slope"] == pytest.approx(sum(SLOPES) / 4)
    assert s["shift"].tolist() == pytest.approx([2.0, 0.0, -2.0, 1.0])
    assert s["mean_shift"] == pytest.approx(1 / 4)
    assert s["steerable_rate"] == pytest.approx(2 / 4)  # p0 and p3 end above the gap at 0
    assert s["anti_steerable"] == pytest.approx(2 / 4)  # p2 and p3 have negative slopes


def test_steerability_downward_sign():
    s = metrics.steerability(ALPHAS, GAPS, sign=-1)
    assert s["slope"].tolist() == pytest.approx(SLOPES, abs=1e-6)  # the slope itself is unsigned
    assert s["shift"].tolist() == pytest.approx([-2.0, 0.0, 2.0, -1.0])  # positive = fell
    assert s["mean_shift"] == pytest.approx(-1 / 4)
    assert s["steerable_rate"] == pytest.approx(1 / 4)  # only p2 falls
    assert s["anti_steerable"] == pytest.approx(1 / 4)  # only p0 has a positive slope


def test_steerability_does_not_depend_on_row_order():
    order = [2, 0, 1]
    s = metrics.steerability([ALPHAS[k] for k in order], GAPS[order])
    ref = metrics.steerability(ALPHAS, GAPS)
    assert s["slope"].tolist() == pytest.approx(ref["slope"].tolist(), abs=1e-6)
    assert s["shift"].tolist() == pytest.approx(ref["shift"].tolist())


def test_steerability_repeated_alphas_and_negative_sweep():
    # alpha 0 twice: g(0) = (1 + 3) / 2 = 2, shift 4 - 2 = 2; centred alphas (-1/3, -1/3, 2/3),
    # sum of squares 2/3, sum(centred alpha * gap) = (-1 - 3 + 8) / 3 = 4/3 -> slope 2.
    s = metrics.steerability([0.0, 0.0, 1.0], torch.tensor([[1.0], [3.0], [4.0]]))
    assert s["slope"].item() == pytest.approx(2.0)
    assert s["shift"].item() == pytest.approx(2.0)
    # a sweep on the negative side ends at its largest |alpha|, -2
    s = metrics.steerability([0.0, -1.0, -2.0], torch.tensor([[0.0], [1.0], [5.0]]))
    assert s["shift"].item() == pytest.approx(5.0)
    assert s["slope"].item() == pytest.approx(-2.5)


@pytest.mark.parametrize("alphas, gaps, match", [
    ([1.0, 2.0, 3.0], torch.zeros(3, 2), "alpha = 0"),
    ([0.0, 0.0, 0.0], torch.zeros(3, 2), "two distinct"),
    ([0.0, float("nan"), 1.0], torch.zeros(3, 2), "finite"),
    ([0.0, float("inf"), 1.0], torch.zeros(3, 2), "finite"),
    ([0.0, 1.0], torch.zeros(3, 2), r"\[len\(alphas\)=2"),
    ([0.0, 1.0, 2.0], torch.zeros(3), r"\[len\(alphas\)=3"),
    ([0.0, 1.0, 2.0], torch.zeros(3, 0), "no prompts"),
    ([], torch.zeros(0, 2), "empty"),
    ([-2.0, 0.0, 2.0], torch.zeros(3, 2), "both signs"),
    ([0.0, 1.0, 2.0], torch.tensor([[0.0], [float("nan")], [1.0]]), "NaN"),
])
def test_steerability_rejects(alphas, gaps, match):
    with pytest.raises(ValueError, match=match):
        metrics.steerability(alphas, gaps)


@pytest.mark.parametrize("sign", [0, 2, -2])
def test_sign_must_be_plus_or_minus_one(sign):
    with pytest.raises(ValueError, match="sign"):
        metrics.steerability(ALPHAS, GAPS, sign=sign)
    with pytest.raises(ValueError, match="sign"):
        metrics.moved_shares(torch.zeros(1, 2), torch.zeros(1, 2), sign)


# ---------------------------------------------------------------------------------------------
# MCQ


def test_mcq_by_hand():
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, -1.0, 5.0], [4.0, 4.0, 0.0]])
    g = metrics.mcq_gap(logits, torch.tensor([1, 0, 0], dtype=torch.int32), torch.tensor([0, 2, 1]))
    assert g.tolist() == [2.0, -3.0, 0.0]
    assert metrics.mcq_accuracy(g) == pytest.approx(1 / 3)  # the tie counts as wrong


@pytest.mark.parametrize("logits, match_ids, other_ids, match", [
    (torch.zeros(2, 3), torch.tensor([0]), torch.tensor([1]), r"\[P, V\]"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([1]), r"\[P, V\]"),
    (torch.zeros(3), torch.tensor([0, 1, 2]), torch.tensor([1, 0, 0]), r"\[P, V\]"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), "no questions"),
    (torch.zeros(2, 3), torch.tensor([0, 3]), torch.tensor([1, 1]), "match_ids.*outside"),
    (torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([-1, 1]), "other_ids.*outside"),
    (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.tensor([1, 1]), "integer"),
])
def test_mcq_gap_rejects(logits, match_ids, other_ids, match):
    with pytest.raises(ValueError, match=match):
        metrics.mcq_gap(logits, match_ids, other_ids)


def test_mcq_accuracy_rejects_empty():
    with pytest.raises(ValueError, match="no gaps"):
        metrics.mcq_accuracy(torch.zeros(0))


# ---------------------------------------------------------------------------------------------
# distinct-n and windows


def test_distinct_n_by_hand():
    seqs = [[1, 2, 1, 2, 1], [3, 3]]
    # bigrams: (1,2),(2,1),(1,2),(2,1) | (3,3) -> 3 distinct of 5 (none across the two texts)
    assert metrics.distinct_n(seqs, 2) == pytest.approx(3 / 5)
    assert metrics.distinct_n(seqs) == pytest.approx(3 / 5)  # n = 2 by default
    assert metrics.distinct_n(seqs, 1) == pytest.approx(3 / 7)
    # trigrams: (1,2,1),(2,1,2),(1,2,1) -> 2 of 3; the second text has none
    assert metrics.distinct_n(seqs, 3) == pytest.approx(2 / 3)
    assert metrics.distinct_n_per_text(seqs, 2) == pytest.approx([2 / 4, 1.0])
    assert metrics.distinct_n_per_text(seqs, 3) == pytest.approx([2 / 3, 0.0])
    assert metrics.distinct_n([[1], []], 2) == 0.0
    assert metrics.distinct_n([], 2) == 0.0
    assert metrics.distinct_n_per_text([], 2) == []


def test_distinct_n_compares_tensor_ids_by_value():
    seqs = torch.tensor([[1, 2, 1, 2, 1]])
    assert metrics.distinct_n(seqs, 2) == pytest.approx(2 / 4)
    assert metrics.distinct_n_per_text(list(seqs), 2) == pytest.approx([2 / 4])


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_distinct_n_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n must be"):
        metrics.distinct_n([[1, 2]], n)
    with pytest.raises(ValueError, match="n must be"):
        metrics.distinct_n_per_text([[1, 2]], n)


@pytest.mark.parametrize("length, window, spans", [
    (100, 32, [(0, 32), (32, 64), (64, 96)]),  # 4 left over < 16: dropped
    (80, 32, [(0, 32), (32, 64), (64, 80)]),  # 16 left over = half a window: kept
    (79, 32, [(0, 32), (32, 64)]),  # 15 left over: dropped
    (64, 32, [(0, 32), (32, 64)]),
    (16, 32, [(0, 16)]),
    (15, 32, []),
    (0, 32, []),
    (5, 3, [(0, 3), (3, 5)]),  # odd window: 2 of 3 is at least half
    (4, 3, [(0, 3)]),  # 1 of 3 is not
    (3, 1, [(0, 1), (1, 2), (2, 3)]),
])
def test_window_scores_by_hand(length, window, spans):
    assert metrics.window_scores(list(range(length)), window) == spans


def test_window_scores_default_and_rejects():
    assert metrics.window_scores(list(range(48))) == [(0, 32), (32, 48)]
    for bad in (0, -4, 2.0):
        with pytest.raises(ValueError, match="window"):
            metrics.window_scores([1, 2, 3], bad)


# ---------------------------------------------------------------------------------------------
# moved shares


def test_moved_shares_by_hand():
    base = torch.tensor([[0.0, 0.2], [0.5, 0.5]])  # prompt means 0.1 and 0.5
    steered = torch.tensor([[0.3, -0.1, 0.1], [0.5, 0.9, 0.7]])  # 3 samples against 2
    up = metrics.moved_shares(base, steered, +1)
    assert up["right_per_prompt"].tolist() == pytest.approx([1 / 3, 2 / 3])  # 0.3 > 0.1; 0.9, 0.7 > 0.5
    assert up["wrong_per_prompt"].tolist() == pytest.approx([1 / 3, 0.0])  # -0.1 < 0.1; 0.1 and 0.5 tie
    assert up["right"] == pytest.approx(1 / 2) and up["wrong"] == pytest.approx(1 / 6)
    down = metrics.moved_shares(base, steered, -1)
    assert down["right_per_prompt"].tolist() == pytest.approx([1 / 3, 0.0])
    assert down["wrong_per_prompt"].tolist() == pytest.approx([1 / 3, 2 / 3])
    # a wider tie band: |delta| <= 0.25 is neither (0.3 - 0.1 = 0.2, 0.7 - 0.5 = 0.2)
    wide = metrics.moved_shares(base, steered, +1, eps=0.25)
    assert wide["right_per_prompt"].tolist() == pytest.approx([0.0, 1 / 3])
    assert wide["wrong_per_prompt"].tolist() == pytest.approx([0.0, 0.0])
    # |delta| == eps exactly is a tie (binary fractions, so no rounding)
    edge = metrics.moved_shares(torch.zeros(1, 2), torch.tensor([[0.25, -0.25, 0.5, -0.5]]), +1, eps=0.25)
    assert edge["right"] == 0.25 and edge["wrong"] == 0.25


@pytest.mark.parametrize("base, steered, kwargs, match", [
    (torch.zeros(2, 2), torch.zeros(3, 2), {}, "same P"),
    (torch.zeros(2), torch.zeros(2, 2), {}, "same P"),
    (torch.zeros(0, 2), torch.zeros(0, 2), {}, "at least one"),
    (torch.zeros(2, 2), torch.zeros(2, 0), {}, "at least one"),
    (torch.zeros(2, 2), torch.zeros(2, 2), {"eps": -1.0}, "eps"),
    (torch.zeros(2, 2), torch.full((2, 2), float("nan")), {}, "NaN"),
])
def test_moved_shares_rejects(base, steered, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.moved_shares(base, steered, 1, **kwargs)


# -- paired bootstrap interval ------------------------------------------------------------------


@pytest.mark.parametrize("n, dist", [(30, "normal"), (77, "skewed")])
def test_paired_interval_covers_the_true_difference_at_about_the_nominal_rate(n, dist):
    """On synthetic per-prompt differences with a known mean, the 95 % interval covers that mean
    in about 95 % of 400 draws (a binomial 99.9 % band around 0.95 at 400 draws is about
    0.91-0.98; a percentile bootstrap of a mean runs a little narrow at small n)."""
    gen = torch.Generator().manual_seed(11)
    true, covered = 0.07, 0
    for k in range(400):
        if dist == "normal":
            x = true + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
        else:  # a skewed difference: exponential, shifted so its mean is `true`
            x = true - 0.2 + torch.empty(n, dtype=torch.float64).exponential_(5.0, generator=gen)
        r = metrics.paired_interval(x, n_resamples=2000, seed=k)
        covered += r["lo"] <= true <= r["hi"]
        assert r["lo"] <= r["diff"] <= r["hi"] and r["half_width"] == pytest.approx((r["hi"] - r["lo"]) / 2)
    assert 0.90 <= covered / 400 <= 0.985


def test_paired_interval_verdicts_and_bad_input():
    assert metrics.paired_interval([0.5 + 0.01 * i for i in range(20)])["verdict"] == "win"
    assert metrics.paired_interval([-0.5 - 0.01 * i for i in range(20)])["verdict"] == "loss"
    assert metrics.paired_interval([(-1) ** i * 0.3 for i in range(20)])["verdict"] == "tie"
    same = metrics.paired_interval([0.2] * 5)
    assert (same["lo"], same["hi"], same["verdict"]) == (0.2, 0.2, "win")
    for bad in ([0.1], [], [0.1, float("nan")], [[0.1, 0.2]]):
        with pytest.raises(SVFArgumentError):
            metrics.paired_interval(bad)
    with pytest.raises(SVFArgumentError, match="level"):
        metrics.paired_interval([0.1, 0.2], level=1.5)
