"""The paper-style SVF path: autograd of the unfolded scorer inside a Python forward hook.

This is what the published method does at every generated token (and what costs it 2.4x
the unsteered time); the benchmarks measure the fused op against it.
"""

from __future__ import annotations

import torch
from torch import nn

from svf.hf import decoder_layers, layer_output
from svf.scorer import ConceptScorer


def paper_direction(scorer: ConceptScorer, h: torch.Tensor, layer: int) -> torch.Tensor:
    """Unit gradient of the unfolded scorer at rows ``h`` ``[n, d]`` (autograd)."""
    with torch.enable_grad():
        x = h.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(scorer.score_layer(x, layer).sum(), x)
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


class PaperStyleSteering:
    """Forward hooks that steer the last position of each forward pass by autograd."""

    def __init__(self, model: nn.Module, scorer: ConceptScorer, alphas: dict[int, float]) -> None:
        self.model, self.scorer, self.alphas = model, scorer, alphas
        self._handles: list = []

    def __enter__(self) -> PaperStyleSteering:  # noqa: PYI034
        layers = decoder_layers(self.model)
        for i, alpha in self.alphas.items():
            self._handles.append(layers[i].register_forward_hook(self._hook(i, alpha)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: int, alpha: float):
        def hook(module, args, out):
            h = layer_output(out)
            last = h[:, -1]
            last += alpha * paper_direction(self.scorer, last, layer).to(h.dtype)

        return hook
