"""The evaluation's measures (DESIGN.md §8), as small functions on tensors and token lists."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def likelihood_gap(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per prompt: mean log-likelihood of the positive completions minus of the negative ones.

    ``pos [P, n_pos]``, ``neg [P, n_neg]`` (mean per-token log-likelihoods) -> ``[P]``.
    """
    if pos.dim() != 2 or neg.dim() != 2 or pos.shape[0] != neg.shape[0]:
        raise ValueError(f"pos and neg must be [P, n] with the same P, got {tuple(pos.shape)} and {tuple(neg.shape)}")
    if pos.shape[1] == 0 or neg.shape[1] == 0:
        raise ValueError("need at least one positive and one negative completion")
    return pos.float().mean(1) - neg.float().mean(1)


def steerability(alphas: Sequence[float], gaps: torch.Tensor, direction: int = 1) -> dict:
    """Per-input response of the gap to strength over a sweep that includes alpha = 0.

    ``gaps [n_alpha, P]``. Returns, with ``dir`` = ``direction`` (+1: the gap should rise, -1:
    fall) and ``a*`` = the sweep's largest ``|alpha|``:
    ``slope [P]`` least-squares slope of gap over alpha; ``mean_slope``;
    ``steerable_rate`` share of prompts with ``dir * (gap(a*) - gap(0)) > 0``;
    ``anti_steerable`` share with ``dir * slope < 0``;
    ``mean_shift`` mean of ``dir * (gap(a*) - gap(0))`` (positive = moved as requested).
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    a = torch.as_tensor(list(alphas), dtype=torch.float64)
    if gaps.dim() != 2 or gaps.shape[0] != a.numel():
        raise ValueError(f"gaps must be [len(alphas)={a.numel()}, P], got {tuple(gaps.shape)}")
    if gaps.shape[1] == 0:
        raise ValueError("gaps has no prompts")
    if not torch.isfinite(a).all():
        raise ValueError(f"alphas must be finite, got {list(alphas)}")
    zero = (a == 0).nonzero().flatten()
    if zero.numel() == 0:
        raise ValueError(f"the sweep must include alpha = 0 (the unsteered gap), got {list(alphas)}")
    if a.unique().numel() < 2:
        raise ValueError("need at least two distinct alphas for a slope")
    g = gaps.double()
    ac = a - a.mean()
    slope = (ac[:, None] * (g - g.mean(0))).sum(0) / ac.square().sum()
    top = int(a.abs().argmax())
    shift = direction * (g[top] - g[int(zero[0])])
    return {
        "slope": slope.float(),
        "mean_slope": float(slope.mean()),
        "steerable_rate": float((shift > 0).double().mean()),
        "anti_steerable": float((direction * slope < 0).double().mean()),
        "mean_shift": float(shift.mean()),
        "shift": shift.float(),
    }


def mcq_gap(logits: torch.Tensor, match_ids: torch.Tensor, other_ids: torch.Tensor) -> torch.Tensor:
    """A/B questions: logit of the behaviour-matching letter minus the other letter, ``[P]``."""
    if logits.dim() != 2 or match_ids.shape != (logits.shape[0],) or other_ids.shape != match_ids.shape:
        raise ValueError(f"logits must be [P, V] and ids [P], got {tuple(logits.shape)}, "
                         f"{tuple(match_ids.shape)}, {tuple(other_ids.shape)}")
    rows = torch.arange(logits.shape[0])
    return logits[rows, match_ids].float() - logits[rows, other_ids].float()


def mcq_accuracy(gaps: torch.Tensor) -> float:
    """Share of questions whose matching letter wins (gap > 0)."""
    if gaps.numel() == 0:
        raise ValueError("no gaps")
    return float((gaps > 0).double().mean())


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams, pooled over the sequences (0.0 when there are none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for toks in token_lists for g in _ngrams(list(toks), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n_per_text(token_lists: Sequence[Sequence[int]], n: int = 2) -> list[float]:
    """:func:`distinct_n` of each sequence on its own (repetition per continuation)."""
    return [distinct_n([toks], n) for toks in token_lists]


def moved_shares(base: torch.Tensor, steered: torch.Tensor, direction: int, eps: float = 1e-9) -> dict:
    """Judge scores ``[P, S]`` (S samples per prompt): per prompt, the share of steered samples
    above (direction +1) or below (-1) the prompt's mean unsteered score, and the share moved the
    wrong way (``|delta| <= eps`` counts as neither)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if base.dim() != 2 or steered.dim() != 2 or base.shape[0] != steered.shape[0] or base.numel() == 0:
        raise ValueError(f"base and steered must be [P, S] with the same P, got {tuple(base.shape)}, {tuple(steered.shape)}")
    delta = direction * (steered.double() - base.double().mean(1, keepdim=True))
    right = (delta > eps).double().mean(1)
    wrong = (delta < -eps).double().mean(1)
    return {"right": float(right.mean()), "wrong": float(wrong.mean()),
            "right_per_prompt": right.float(), "wrong_per_prompt": wrong.float()}
