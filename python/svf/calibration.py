"""Statistics of the training activations that calibrate steering (docs/STEERING.md).

* :func:`robust_norm`: the unit of the relative strength. Many decoders carry *massive
  activations*: a few residual dimensions tens to hundreds of times larger than the rest, in
  every token. They dominate the mean L2 norm, so ``strength * mean_norm`` pushes along the
  other dimensions, the ones that carry meaning, much harder on some models than on others.
  The robust norm is the norm an activation would have if every dimension were as large as
  the typical (non-outlier) ones.
* :func:`within_class_covariance`: the covariance of the scorer's projected activations
  ``u = R @ hn``, the preconditioner of the ``preconditioned`` direction (DESIGN.md §2).
"""

from __future__ import annotations

import torch

#: A dimension whose RMS over the training activations exceeds this many times the median
#: dimension's RMS counts as an outlier (massive activations are 20x to 1000x).
OUTLIER_FACTOR = 6.0


def robust_norm(h: torch.Tensor, outlier_factor: float = OUTLIER_FACTOR) -> float:
    """Norm of activations ``h [n, d]`` with the outlier dimensions left out:
    ``sqrt(d * mean over kept dimensions of E[h_j^2])``, where a dimension is kept when its
    RMS is at most ``outlier_factor`` times the median dimension's. Without outliers this is
    the RMS L2 norm of ``h`` (close to its mean norm)."""
    ms = h.double().pow(2).mean(0)  # E[h_j^2] per dimension
    rms = ms.sqrt()
    keep = rms <= outlier_factor * rms.median()
    return float((ms[keep].mean() * h.shape[-1]).sqrt())


def within_class_covariance(u_pos: torch.Tensor, u_neg: torch.Tensor) -> torch.Tensor:
    """Pooled within-class covariance ``[r, r]`` of projected activations ``u [n, r]`` of the
    positive and negative texts, scaled to mean eigenvalue 1 (only its shape matters: the
    direction is normalised).

    Why within-class: for a linear scorer ``w`` fitted as a discriminant, ``w = S^-1 (mu+ -
    mu-)``, so ``S @ w`` is the mean difference itself, the direction CAA steers along. The
    preconditioned gradient weights the scorer's gradient by the data's own spread in the same
    way."""
    pos = u_pos.double() - u_pos.double().mean(0)
    neg = u_neg.double() - u_neg.double().mean(0)
    centred = torch.cat([pos, neg])
    cov = centred.T @ centred / max(centred.shape[0] - 2, 1)
    scale = torch.trace(cov) / cov.shape[0]
    if not bool(scale > 0):
        return torch.eye(cov.shape[0], dtype=torch.float32)
    return (cov / scale).float()
