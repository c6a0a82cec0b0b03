"""The evaluation's measures (DESIGN.md §8), as small functions on tensors and token lists.

Arithmetic on scores only (the model runs in :mod:`svf.eval.likelihood`); bad input raises
:class:`SVFArgumentError` (a ``ValueError``) naming the argument and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from svf_kernels import SVFArgumentError

from ..optional import require


def _tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise SVFArgumentError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value

# ---------------------------------------------------------------------------------------------
# Likelihood steerability


def likelihood_gap(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per prompt: mean log-likelihood of the positive completions minus of the negative ones.

    ``pos [P, n_pos]``, ``neg [P, n_neg]`` (mean per-token log-likelihoods) -> ``[P]``.
    """
    _tensor(pos, "pos")
    _tensor(neg, "neg")
    if pos.dim() != 2 or neg.dim() != 2 or pos.shape[0] != neg.shape[0]:
        raise SVFArgumentError(f"pos and neg must be [P, n] with the same P, got {tuple(pos.shape)} and {tuple(neg.shape)}")
    if pos.shape[0] == 0:
        raise SVFArgumentError("pos and neg have no prompts (P = 0)")
    if pos.shape[1] == 0 or neg.shape[1] == 0:
        raise SVFArgumentError("pos and neg: need at least one positive and one negative completion")
    return pos.float().mean(1) - neg.float().mean(1)


def _check_sign(sign: int) -> None:
    if isinstance(sign, bool) or sign not in (1, -1):
        raise SVFArgumentError(f"sign must be +1 or -1, got {sign}")


def steerability(alphas: Sequence[float], gaps: torch.Tensor, sign: int = 1) -> dict:
    """Per-input response of the gap to steering strength, over a sweep that includes alpha = 0.

    ``gaps[k, p]`` is prompt ``p``'s gap at strength ``alphas[k]``. Let ``d = sign`` (+1:
    steering is meant to raise the gap, -1: to lower it), ``a*`` the sweep's alpha of largest
    ``|alpha|``, and ``g(a)`` a prompt's gap at ``a`` (the mean, if ``a`` is repeated). Returns:

    * ``slope [P]``: least-squares slope of gap over alpha (every sweep point, alpha as given);
    * ``mean_slope``: mean of ``slope``;
    * ``shift [P]`` = ``d * (g(a*) - g(0))``, so positive always means "moved as requested";
    * ``mean_shift``: mean of ``shift``;
    * ``steerable_rate``: share of prompts with ``shift > 0`` (strictly: an unchanged gap is not
      steerable), i.e. the gap at ``a*`` is above (``d = +1``) / below (``d = -1``) the gap at 0;
    * ``anti_steerable``: share of prompts with ``d * slope < 0`` (strictly: flat is neither).

    Alphas are meant as strengths on one side of 0, normally magnitudes ``>= 0`` with the
    requested movement given by ``sign`` (as :mod:`svf.eval.evaluate_likelihood` passes them);
    for a sweep of negative alphas the slope's sign is opposite to the shift's, so pass
    ``|alpha|``. ``ValueError`` when alpha = 0 is missing, alphas are not finite or fewer than
    two distinct, ``a*`` is ambiguous (``+a`` and ``-a`` both largest), or shapes disagree.
    """
    _check_sign(sign)
    if isinstance(alphas, (str, bytes)) or not hasattr(alphas, "__iter__"):
        raise SVFArgumentError(f"alphas must be a sequence of numbers, got {type(alphas).__name__}")
    try:
        values = [float(x) for x in alphas]
    except (TypeError, ValueError):
        raise SVFArgumentError(f"alphas must be a sequence of numbers, got {list(alphas)!r:.80}") from None
    a = torch.as_tensor(values, dtype=torch.float64)
    _tensor(gaps, "gaps")
    if a.numel() == 0:
        raise SVFArgumentError("alphas is empty")
    if not torch.isfinite(a).all():
        raise SVFArgumentError(f"alphas must be finite, got {list(alphas)}")
    if gaps.dim() != 2 or gaps.shape[0] != a.numel():
        raise SVFArgumentError(f"gaps must be [len(alphas)={a.numel()}, P], got {tuple(gaps.shape)}")
    if gaps.shape[1] == 0:
        raise SVFArgumentError("gaps has no prompts (P = 0)")
    if not torch.isfinite(gaps).all():
        raise SVFArgumentError("gaps contain NaN or infinite values")
    at_zero = a == 0
    if not at_zero.any():
        raise SVFArgumentError(f"the sweep must include alpha = 0 (the unsteered gap), got {list(alphas)}")
    if a.unique().numel() < 2:
        raise SVFArgumentError(f"need at least two distinct alphas for a slope, got {list(alphas)}")
    top = a.abs().max()
    at_top = a.abs() == top
    if a[at_top].unique().numel() > 1:
        raise SVFArgumentError(f"the largest |alpha| ({float(top)}) occurs with both signs: which end of "
                         f"the sweep to compare with alpha = 0 is ambiguous, got {list(alphas)}")
    g = gaps.double()
    ac = a - a.mean()
    slope = (ac[:, None] * (g - g.mean(0))).sum(0) / ac.square().sum()
    shift = sign * (g[at_top].mean(0) - g[at_zero].mean(0))
    return {
        "slope": slope.float(),
        "mean_slope": float(slope.mean()),
        "steerable_rate": float((shift > 0).double().mean()),
        "anti_steerable": float((sign * slope < 0).double().mean()),
        "mean_shift": float(shift.mean()),
        "shift": shift.float(),
    }


# ---------------------------------------------------------------------------------------------
# Multiple choice


def mcq_gap(logits: torch.Tensor, match_ids: torch.Tensor, other_ids: torch.Tensor) -> torch.Tensor:
    """A/B questions: logit of the behaviour-matching letter minus the other letter's, ``[P]``
    (``logits [P, V]`` at the answer position)."""
    for name, t in (("logits", logits), ("match_ids", match_ids), ("other_ids", other_ids)):
        _tensor(t, name)
    if logits.dim() != 2 or match_ids.shape != (logits.shape[0],) or other_ids.shape != match_ids.shape:
        raise SVFArgumentError(f"logits must be [P, V] and ids [P], got {tuple(logits.shape)}, "
                         f"{tuple(match_ids.shape)}, {tuple(other_ids.shape)}")
    if logits.shape[0] == 0:
        raise SVFArgumentError("no questions (P = 0)")
    V = logits.shape[1]
    for name, ids in (("match_ids", match_ids), ("other_ids", other_ids)):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise SVFArgumentError(f"{name} must be integer token ids, got {ids.dtype}")
        if bool(((ids < 0) | (ids >= V)).any()):
            raise SVFArgumentError(f"{name} has ids outside the vocabulary [0, {V})")
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, match_ids.long()].float() - logits[rows, other_ids.long()].float()


def mcq_accuracy(gaps: torch.Tensor) -> float:
    """Share of questions whose matching letter wins (gap > 0 strictly; a tie is wrong)."""
    _tensor(gaps, "gaps")
    if gaps.numel() == 0:
        raise SVFArgumentError("no gaps")
    return float((gaps > 0).double().mean())


# ---------------------------------------------------------------------------------------------
# Repetition and long-form windows


def _ngrams(tokens: Sequence[int], n: int, name: str = "token_lists") -> list[tuple[int, ...]]:
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise SVFArgumentError(f"{name} must hold sequences of integer token ids, got {type(tokens).__name__}")
    try:
        toks = [int(t) for t in tokens]  # tensors hash by identity: compare ids by value
    except (TypeError, ValueError, RuntimeError):
        raise SVFArgumentError(f"{name} must hold sequences of integer token ids") from None
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SVFArgumentError(f"n must be an int >= 1, got {n!r}")


def _check_token_lists(token_lists: object) -> None:
    if isinstance(token_lists, (str, bytes)) or not hasattr(token_lists, "__iter__"):
        raise SVFArgumentError(f"token_lists must be a sequence of token id sequences, got "
                               f"{type(token_lists).__name__}")


def distinct_n(token_lists: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams, pooled over the sequences (n-grams never cross two
    sequences); 0.0 when there are none. Low = repetitive text."""
    _check_n(n)
    _check_token_lists(token_lists)
    grams = [g for toks in token_lists for g in _ngrams(toks, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_n_per_text(token_lists: Sequence[Sequence[int]], n: int = 2) -> list[float]:
    """:func:`distinct_n` of each sequence on its own (repetition per continuation)."""
    _check_n(n)
    _check_token_lists(token_lists)
    return [distinct_n([toks], n) for toks in token_lists]


def window_scores(token_ids: Sequence[int], window: int = 32) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of consecutive non-overlapping windows of ``token_ids``, for
    scoring a long continuation per window; a last partial window is kept only when it has at
    least half a window of tokens (``2 * length >= window``)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise SVFArgumentError(f"window must be an int >= 1, got {window!r}")
    if isinstance(token_ids, (str, bytes)) or not hasattr(token_ids, "__len__"):
        raise SVFArgumentError(f"token_ids must be a sequence of token ids, got {type(token_ids).__name__}")
    n = len(token_ids)
    spans = [(s, s + window) for s in range(0, n - window + 1, window)]
    rest = n - len(spans) * window
    if rest > 0 and 2 * rest >= window:
        spans.append((n - rest, n))
    return spans


# ---------------------------------------------------------------------------------------------
# Open-ended judge scores


def moved_shares(base: torch.Tensor, steered: torch.Tensor, sign: int, eps: float = 1e-9) -> dict:
    """Judge scores ``base [P, S0]`` (unsteered) and ``steered [P, S]``, S samples per prompt:
    per prompt, the share of steered samples that moved toward the requested side from that
    prompt's mean unsteered score (up for ``sign`` +1, down for -1), and the share moved
    the wrong way; ``|delta| <= eps`` counts as neither.

    Returns ``right`` / ``wrong`` (means over prompts) and ``right_per_prompt`` /
    ``wrong_per_prompt`` ``[P]``.
    """
    _check_sign(sign)
    _tensor(base, "base")
    _tensor(steered, "steered")
    if base.dim() != 2 or steered.dim() != 2 or base.shape[0] != steered.shape[0]:
        raise SVFArgumentError(f"base and steered must be [P, S] with the same P, got {tuple(base.shape)}, {tuple(steered.shape)}")
    if base.numel() == 0 or steered.numel() == 0:
        raise SVFArgumentError(f"base and steered need at least one prompt and one sample each, got "
                         f"{tuple(base.shape)}, {tuple(steered.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and eps >= 0):
        raise SVFArgumentError(f"eps must be finite and >= 0, got {eps}")
    if not (torch.isfinite(base).all() and torch.isfinite(steered).all()):
        raise SVFArgumentError("base or steered scores contain NaN or infinite values")
    delta = sign * (steered.double() - base.double().mean(1, keepdim=True))
    right = (delta > eps).double().mean(1)
    wrong = (delta < -eps).double().mean(1)
    return {"right": float(right.mean()), "wrong": float(wrong.mean()),
            "right_per_prompt": right.float(), "wrong_per_prompt": wrong.float()}


# ---------------------------------------------------------------------------------------------
# Paired comparisons


#: A paired difference's verdict: its interval above 0, across 0, or below 0.
VERDICTS = ("win", "tie", "loss")


def paired_interval(diffs: Sequence[float] | torch.Tensor, *, level: float = 0.95,
                    n_resamples: int = 10_000, seed: int = 0) -> dict:
    """The mean of per-prompt paired differences (method A minus method B on the same prompts
    and sampling seeds) with a percentile bootstrap interval over prompts
    (``scipy.stats.bootstrap``), and the verdict: ``win`` when the interval lies above 0,
    ``loss`` below, ``tie`` otherwise.

    Returns ``diff``, ``lo``, ``hi``, ``half_width`` (``(hi - lo) / 2``), ``verdict`` and
    ``n_prompts``. Every difference equal (e.g. two methods that both left the text as it
    was): the interval is that value."""
    import numpy as np

    stats = require("scipy.stats", "eval")
    x = np.asarray(diffs.tolist() if isinstance(diffs, torch.Tensor) else list(diffs), dtype=np.float64)
    if x.ndim != 1 or x.size < 2:
        raise SVFArgumentError(f"diffs must be one value per prompt, at least 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise SVFArgumentError("diffs contain NaN or infinite values")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise SVFArgumentError(f"level must be in (0, 1), got {level!r}")
    mean = float(x.mean())
    if np.ptp(x) == 0:
        lo = hi = mean
    else:
        ci = stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie"
    return {"diff": mean, "lo": lo, "hi": hi, "half_width": (hi - lo) / 2, "verdict": verdict,
            "n_prompts": int(x.size)}
