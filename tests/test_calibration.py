"""The strength unit robust to massive activations and the preconditioned direction's fold."""

from __future__ import annotations

import torch

from svf.calibration import OUTLIER_FACTOR, robust_norm, within_class_covariance
from svf.scorer import ConceptScorer, ScorerConfig


def test_robust_norm_ignores_massive_dimensions() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(500, 257, generator=g, dtype=torch.float64)
    plain = robust_norm(h)
    assert abs(plain - float(h.pow(2).sum(-1).mean().sqrt())) < 1e-9  # no outliers: the RMS norm
    massive = h.clone()
    massive[:, 3] += 400.0  # one dimension in every token, as massive activations are
    massive[:, 100] -= 250.0
    assert float(massive.norm(dim=-1).mean()) > 10 * plain  # the mean norm is dominated by them
    assert abs(robust_norm(massive) - plain) / plain < 0.01


def test_robust_norm_keeps_moderately_large_dimensions() -> None:
    h = torch.ones(10, 100)
    h[:, 0] = OUTLIER_FACTOR * 0.9  # large, but under the outlier factor: kept
    assert abs(robust_norm(h) - float(h.norm(dim=-1).mean())) < 1e-5


def test_within_class_covariance_turns_a_discriminant_into_the_mean_difference() -> None:
    """For Fisher's discriminant w = S^-1 (mu+ - mu-), S @ w is the mean difference (up to
    scale): the property that makes the preconditioned direction lean toward CAA's."""
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(6, 6, generator=g, dtype=torch.float64)
    pos = torch.randn(400, 6, generator=g, dtype=torch.float64) @ mix + 1.0
    neg = torch.randn(400, 6, generator=g, dtype=torch.float64) @ mix - 0.5
    S = within_class_covariance(pos, neg).double()
    assert abs(float(torch.trace(S)) / 6 - 1) < 1e-6
    diff = pos.mean(0) - neg.mean(0)
    w = torch.linalg.solve(S, diff)
    out = S @ w
    cos = float(out @ diff / (out.norm() * diff.norm()))
    assert cos > 0.9999
    # the gradient w itself points elsewhere: the preconditioning matters
    assert float(w @ diff / (w.norm() * diff.norm())) < 0.99


def test_fold_with_covariance_gives_the_preconditioned_matrix() -> None:
    torch.manual_seed(0)
    scorer = ConceptScorer(ScorerConfig(hidden_size=24, train_layers=(1, 2), r=5, de=3, m=7))
    with torch.no_grad():
        for p in scorer.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    plain = scorer.fold(2)
    assert plain.B is None
    eye = scorer.fold(2, torch.eye(5))
    assert torch.allclose(eye.B, plain.A, atol=1e-6)  # S = I: the plain gradient
    S = within_class_covariance(torch.randn(50, 5), torch.randn(50, 5))
    f = scorer.fold(2, S)
    q = torch.randn(7)
    gain = 1 + scorer.layer_emb[1] @ scorer.Wg.T
    expected = scorer.R.T @ S @ (gain * (scorer.W1.T @ q))  # R^T S diag(gain) W1^T q
    assert torch.allclose(f.B.T @ q, expected.detach(), atol=1e-5)
    assert torch.equal(f.A, plain.A) and torch.equal(f.c, plain.c)  # the score is unchanged
