"""The concept scorer of DESIGN.md §2: the math of SVF lives here.

For decoder layer ``l`` with output residual stream ``h`` ``[d]``::

    hn = h / sqrt(mean(h*h) + eps)          # parameter-free RMS normalisation
    u  = R @ hn                             # R: [r, d], shared by all layers, PCA-initialised
    ut = (1 + Wg @ e[l]) * u + Wb @ e[l]    # FiLM calibration from a learned layer embedding
    f  = w2 @ gelu_tanh(W1 @ ut + b1) + b2  # one hidden layer of m units, scalar score

The steering direction is ``∇_h f``. For a fixed layer the FiLM terms are constants, so
:meth:`ConceptScorer.fold` gives the per-layer kernel form ``A = W1 diag(1 + Wg e) R``,
``c = W1 (Wb e) + b1`` that ``svf_kernels.field_update_`` evaluates with an analytic gradient.

Directions (``DIRECTIONS``): ``gradient`` is ``∇_h f`` (the paper's). ``preconditioned``
weights the gradient by the activations' own covariance inside the scorer's subspace: with
``S[l]`` the within-class covariance of ``u`` at layer ``l`` (:mod:`svf.calibration`), the
gradient with respect to ``hn`` becomes ``R.T S diag(1 + Wg e) W1.T (gelu'(z) * w2)``,
that is ``B.T (gelu'(z) * w2)`` with a second folded matrix

    B = W1 diag(1 + Wg e) S R                  # [m, d], the shape of A

so the kernels still run one fused pass (their optional ``B``). For a linear discriminant
``S @ w`` is the class-mean difference: the preconditioned direction leans towards where the
data itself spreads, as CAA does, while keeping the field's dependence on ``h``.

``natural`` divides the gradient by the Fisher information ``F`` of the model's next-token
distribution with respect to ``h`` (:mod:`svf.fisher`): with the symmetric ``[d, d]`` matrix
``M = (F / mean_eig(F) + lam I)^-1`` the folded matrix is ``B = A @ M``, so the kernels compute
``P(hn) M A.T (gelu'(z) * w2) / rms`` (``P(hn) = I - hn hn.T / d``, the RMS norm's Jacobian
times ``rms``): ``M`` applied to the gradient with respect to ``hn``, before the RMS norm's
Jacobian. That is the natural gradient ``(F + lam' I)^-1 ∇_h f`` up to the order of ``M`` and
``P`` (``P`` differs from the identity in one direction only). It moves the score most per unit
of change of the next-token distribution (KL ≈ ½ δᵀ F δ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from svf_kernels import SVFArgumentError, gelu_tanh

from .arguments import check_int, check_number, show


@dataclass(frozen=True)
class ScorerConfig:
    """Hyper-parameters (paper defaults: r = 64, de = 8, m = 64)."""

    hidden_size: int
    train_layers: tuple[int, ...]
    r: int = 64
    de: int = 8
    m: int = 64
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("hidden_size", "r", "de", "m"):
            check_int(getattr(self, name), f"ScorerConfig.{name}", minimum=1)
        check_number(self.eps, "ScorerConfig.eps", positive=True)
        layers = self.train_layers
        if (not isinstance(layers, tuple) or not layers
                or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers)
                or list(layers) != sorted(set(layers))):
            raise SVFArgumentError("ScorerConfig.train_layers must be a non-empty tuple of strictly "
                                   f"increasing layer indices >= 0, got {show(layers)}")


#: The steering directions a field offers (see the module docstring).
DIRECTIONS = ("gradient", "preconditioned", "natural")


@dataclass(frozen=True)
class FoldedLayer:
    """One layer's kernel form: ``A [m, d]``, ``c [m]``, ``w2 [m]``, ``b2 [1]``; ``B [m, d]``
    for the preconditioned or natural direction (None: the plain gradient, ``B = A``)."""

    A: torch.Tensor
    c: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    B: torch.Tensor | None = None


def rms_normalize(h: torch.Tensor, eps: float) -> torch.Tensor:
    """``h / sqrt(mean(h*h) + eps)`` over the last dimension."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


class ConceptScorer(nn.Module):
    """Scalar concept score ``f(h, l)`` shared by the layers of a training window."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        self.config = config
        d, r, de, m = config.hidden_size, config.r, config.de, config.m
        self.R = nn.Parameter(torch.randn(r, d) / d**0.5)
        self.layer_emb = nn.Parameter(torch.randn(len(config.train_layers), de) * 0.1)
        # FiLM starts as the identity (zero weights) and learns per-layer calibration.
        self.Wg = nn.Parameter(torch.zeros(r, de))
        self.Wb = nn.Parameter(torch.zeros(r, de))
        self.W1 = nn.Parameter(torch.randn(m, r) / r**0.5)
        self.b1 = nn.Parameter(torch.zeros(m))
        self.w2 = nn.Parameter(torch.randn(m) / m**0.5)
        self.b2 = nn.Parameter(torch.zeros(1))

    def layer_position(self, layer: int) -> int:
        """Index of decoder layer ``layer`` in the training window (its embedding row)."""
        try:
            return self.config.train_layers.index(layer)
        except ValueError:
            raise SVFArgumentError(
                f"layer {layer!r} is not in the scorer's training layers {list(self.config.train_layers)}"
            ) from None

    def film(self, layer_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FiLM gain ``1 + Wg e`` and shift ``Wb e`` for layer positions ``[n]`` -> ``[n, r]``."""
        e = self.layer_emb[layer_pos]
        return 1.0 + e @ self.Wg.T, e @ self.Wb.T

    def forward(self, h: torch.Tensor, layer_pos: torch.Tensor) -> torch.Tensor:
        """Scores ``[n]`` for hidden states ``h [n, d]`` at training-window positions ``[n]``."""
        hn = rms_normalize(h, self.config.eps)
        gain, shift = self.film(layer_pos)
        ut = gain * (hn @ self.R.T) + shift
        return gelu_tanh(ut @ self.W1.T + self.b1) @ self.w2 + self.b2

    def score_layer(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Scores for hidden states ``h [..., d]`` of decoder layer ``layer``."""
        flat = h.reshape(-1, h.shape[-1])
        pos = torch.full((flat.shape[0],), self.layer_position(layer), dtype=torch.long, device=h.device)
        return self(flat, pos).reshape(h.shape[:-1])

    @torch.no_grad()
    def fold(self, layer: int, covariance: torch.Tensor | None = None, *,
             natural: torch.Tensor | None = None) -> FoldedLayer:
        """The per-layer kernel form (DESIGN.md §2, folded form); with ``covariance`` (``S``,
        ``[r, r]``) also ``B = W1 diag(1 + Wg e) S R`` for the preconditioned direction, with
        ``natural`` (``M``, symmetric ``[d, d]``) ``B = A @ M`` for the natural one (computed in
        float64)."""
        if covariance is not None and natural is not None:
            raise SVFArgumentError("fold takes a covariance or a natural matrix, not both")
        pos = torch.tensor([self.layer_position(layer)], device=self.R.device)
        gain, shift = self.film(pos)
        A = self.W1 @ (gain[0, :, None] * self.R)
        c = self.W1 @ shift[0] + self.b1
        B = None
        if covariance is not None:
            B = (self.W1 * gain[0]) @ covariance.to(self.R) @ self.R
        if natural is not None:
            d = self.config.hidden_size
            if tuple(natural.shape) != (d, d):
                raise SVFArgumentError(f"the natural matrix must be [{d}, {d}], got "
                                       f"{list(natural.shape)}")
            B = (A.double() @ natural.to(device=A.device, dtype=torch.float64)).to(A.dtype)
        return FoldedLayer(A.clone(), c.clone(), self.w2.clone(), self.b2.clone(), B)

    @torch.no_grad()
    def init_projection_pca(self, hidden: torch.Tensor) -> None:
        """PCA initialisation of ``R`` from RMS-normalised training activations ``[n, d]``.

        Rows of ``R`` are the top-r principal directions scaled by 1/std (whitened), and
        ``b1`` centres the first layer so that GELU starts in its curved range.
        """
        hn = rms_normalize(hidden.float(), self.config.eps)
        mean = hn.mean(0)
        centred = hn - mean
        r = self.config.r
        q = min(r, centred.shape[0], centred.shape[1])
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        std = (s[:q] / max(centred.shape[0] - 1, 1) ** 0.5).clamp_min(1e-6)
        R = torch.randn_like(self.R) / self.config.hidden_size**0.5
        R[:q] = vh[:q] / std[:, None]
        self.R.copy_(R)
        self.b1.copy_(-(self.W1 @ (R @ mean)))
