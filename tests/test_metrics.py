"""Every measure against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from svf import metrics


def test_likelihood_gap_by_hand():
    pos = torch.tensor([[-1.0, -3.0], [-2.0, -2.0]])
    neg = torch.tensor([[-4.0, -4.0, -1.0], [-1.0, -1.0, -1.0]])
    # prompt 0: -2 - (-3) = 1; prompt 1: -2 - (-1) = -1
    assert metrics.likelihood_gap(pos, neg).tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match="same P"):
        metrics.likelihood_gap(pos, neg[:1])
    with pytest.raises(ValueError, match="at least one"):
        metrics.likelihood_gap(pos[:, :0], neg)


def test_steerability_by_hand():
    alphas = [0.0, 1.0, 2.0]
    gaps = torch.tensor([
        [0.0, 1.0, 5.0],   # alpha 0
        [1.0, 1.0, 4.0],   # alpha 1
        [2.0, 1.0, 3.0],   # alpha 2
    ])  # columns: rises (slope 1), flat (slope 0), falls (slope -1)
    s = metrics.steerability(alphas, gaps)
    assert s["slope"].tolist() == pytest.approx([1.0, 0.0, -1.0])
    assert s["mean_slope"] == pytest.approx(0.0)
    assert s["steerable_rate"] == pytest.approx(1 / 3)  # only the first rises at alpha 2
    assert s["anti_steerable"] == pytest.approx(1 / 3)  # only the third has a negative slope
    assert s["mean_shift"] == pytest.approx((2 + 0 - 2) / 3)
    down = metrics.steerability(alphas, gaps, direction=-1)
    assert down["steerable_rate"] == pytest.approx(1 / 3)  # the third falls, as requested
    assert down["anti_steerable"] == pytest.approx(1 / 3)  # the first rises
    assert down["shift"].tolist() == pytest.approx([-2.0, 0.0, 2.0])


def test_steerability_slope_is_least_squares():
    alphas = [0.0, 0.5, 2.0]
    gaps = torch.tensor([[0.0], [2.0], [3.0]])
    # mean alpha = 5/6, mean gap = 5/3; slope = sum((a - 5/6)(g - 5/3)) / sum((a - 5/6)^2)
    a = [x - 5 / 6 for x in alphas]
    g = [x - 5 / 3 for x in (0.0, 2.0, 3.0)]
    want = sum(x * y for x, y in zip(a, g)) / sum(x * x for x in a)
    assert metrics.steerability(alphas, gaps)["slope"].item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("alphas, match", [([1.0, 2.0, 3.0], "alpha = 0"), ([0.0, 0.0, 0.0], "two distinct"),
                                            ([0.0, float("nan"), 1.0], "finite"), ([0.0, 1.0], r"\[len\(alphas\)=2")])
def test_steerability_rejects(alphas, match):
    with pytest.raises(ValueError, match=match):
        metrics.steerability(alphas, torch.zeros(3, 2))


def test_mcq():
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, -1.0, 5.0]])
    g = metrics.mcq_gap(logits, torch.tensor([1, 0]), torch.tensor([0, 2]))
    assert g.tolist() == [2.0, -3.0]
    assert metrics.mcq_accuracy(g) == 0.5


def test_distinct_n_by_hand():
    seqs = [[1, 2, 1, 2, 1], [3, 3]]
    # bigrams: (1,2),(2,1),(1,2),(2,1),(3,3) -> 3 distinct of 5
    assert metrics.distinct_n(seqs, 2) == pytest.approx(3 / 5)
    assert metrics.distinct_n(seqs, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n_per_text(seqs, 2) == pytest.approx([2 / 4, 1.0])
    assert metrics.distinct_n([[1]], 2) == 0.0


def test_moved_shares_by_hand():
    base = torch.tensor([[0.0, 0.2], [0.5, 0.5]])  # prompt means 0.1 and 0.5
    steered = torch.tensor([[0.3, -0.1], [0.5, 0.9]])
    up = metrics.moved_shares(base, steered, +1)
    assert up["right_per_prompt"].tolist() == pytest.approx([0.5, 0.5])  # 0.3 > 0.1; 0.9 > 0.5
    assert up["wrong_per_prompt"].tolist() == pytest.approx([0.5, 0.0])  # -0.1 < 0.1; 0.5 ties
    down = metrics.moved_shares(base, steered, -1)
    assert down["right"] == pytest.approx(0.25) and down["wrong"] == pytest.approx(0.5)
