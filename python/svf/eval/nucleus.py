"""Temperature and nucleus (top-p) filtering without sorting the vocabulary.

transformers' ``TopPLogitsWarper`` sorts every row of the vocabulary at every step; with
Gemma's 262k-token vocabulary that sort took half of a sampling run's time on CPU. The
nucleus is usually a few hundred tokens, so :class:`NucleusWarper` finds it with a partial
``topk`` (widened until it holds the nucleus of every row) and keeps the same tokens:
``scores / temperature`` as ``TemperatureLogitsWarper``, then a token is kept when the
probability of the tokens ranked above it is below ``top_p`` (the most likely one always).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class NucleusWarper(LogitsProcessor):
    """``TemperatureLogitsWarper(temperature)`` then ``TopPLogitsWarper(top_p)``, found by a
    partial top-k of width ``k`` (multiplied by 4 until every row's nucleus fits)."""

    def __init__(self, temperature: float, top_p: float, k: int = 256):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.temperature, self.top_p, self.k = float(temperature), float(top_p), int(k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        vocab = scores.shape[-1]
        lse = scores.logsumexp(-1, keepdim=True)
        k = min(self.k, vocab)
        while True:
            values, index = scores.topk(k, dim=-1)  # descending
            probs = (values - lse).exp()
            above = probs.cumsum(-1) - probs  # mass ranked above each token
            # every row done when its k-th token is already outside the nucleus
            if k == vocab or bool((above[:, -1] >= self.top_p).all()):
                break
            k = min(4 * k, vocab)
        keep = above < self.top_p
        keep[:, 0] = True
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, keep)
        return scores.masked_fill(~mask, -float("inf"))
