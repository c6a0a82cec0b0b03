"""Likelihood steerability of every method (the likelihood measure of docs/DESIGN.md §8).

Per method: a sweep of total strengths (:mod:`svf.eval.methods`: a total displacement split
over the method's layers) on the validation prompts picks the total strength T (largest mean
gap shift toward the requested side, ``sign`` +1 toward the concept, -1 away); the test prompts
are then read once, at total strengths ``0, T/2, T`` (times the sign), for the mean gap shift,
the steerable rate, the per-input slope and the anti-steerable fraction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..concepts import Concept
from ..progress import progress_bar
from .likelihood import completion_logprobs
from .methods import Method, steer_by_method
from .metrics import likelihood_gap, steerability


@dataclass
class LikelihoodResult:
    """One method, one sign (+1 toward the concept, -1 away)."""

    method: str
    sign: int
    sweep: list[float]  # validation total strengths (signed)
    val_shift: list[float]  # mean validation gap shift per sweep entry (toward the requested side)
    total_strength: float  # chosen on validation
    test_total_strengths: list[float]
    test_gaps: torch.Tensor  # [len(test_total_strengths), P_test]
    stats: dict  # from metrics.steerability on the test gaps

    def row(self) -> dict:
        s = self.stats
        return {"method": self.method, "sign": self.sign,
                "total_strength": self.total_strength,
                "mean_shift": float(s["mean_shift"]), "steerable_rate": float(s["steerable_rate"]),
                "anti_steerable": float(s["anti_steerable"]), "mean_slope": float(s["mean_slope"]),
                "n_test": int(self.test_gaps.shape[1])}


def gaps(model, tokenizer, concept: Concept, prompts: Sequence[str], method: Method,
         total_strengths: Sequence[float], scale: float, *, chat: bool | None = None,
         batch_size: int = 32) -> torch.Tensor:
    """``[len(total_strengths), len(prompts)]`` likelihood gaps (positive minus negative
    completions), one row per total strength."""
    rows = []
    for s in total_strengths:
        with steer_by_method(model, method, s, scale):  # one prompt pass serves both completion sets
            lp = completion_logprobs(model, tokenizer, prompts, [*concept.positive, *concept.negative],
                                     chat=chat, batch_size=batch_size, progress=False)  # the calling stage shows the bar
        n_pos = len(concept.positive)
        rows.append(likelihood_gap(lp[:, :n_pos], lp[:, n_pos:]))
    return torch.stack(rows)


def evaluate_method(model, tokenizer, concept: Concept, method: Method, scale: float,
                    sweep: Sequence[float], sign: int, *, chat: bool | None = None,
                    base_val: torch.Tensor | None = None, base_test: torch.Tensor | None = None,
                    batch_size: int = 32) -> LikelihoodResult:
    """Sweep ``sign * sweep`` on validation, pick the best, then measure on test once."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    if not method.fields:
        raise ValueError("the base method has no total strength to sweep")
    if not sweep or any(s <= 0 for s in sweep):
        raise ValueError(f"sweep must be positive total strengths, got {list(sweep)}")
    val_p, test_p = concept.validation_prompts, concept.test_prompts
    signed = [sign * s for s in sweep]
    if base_val is None:
        base_val = gaps(model, tokenizer, concept, val_p, method, [0.0], scale, chat=chat, batch_size=batch_size)[0]
    val = gaps(model, tokenizer, concept, val_p, method, signed, scale, chat=chat, batch_size=batch_size)
    shift = [float(sign * (g - base_val).mean()) for g in val]
    best = signed[max(range(len(signed)), key=shift.__getitem__)]
    test_totals = [0.0, best / 2, best]
    if base_test is None:
        base_test = gaps(model, tokenizer, concept, test_p, method, [0.0], scale, chat=chat, batch_size=batch_size)[0]
    rest = gaps(model, tokenizer, concept, test_p, method, test_totals[1:], scale, chat=chat, batch_size=batch_size)
    test = torch.cat([base_test[None], rest])
    # slopes over |total strength|; with sign -1 the requested movement is downward
    stats = steerability([abs(s) for s in test_totals], test, sign=sign)
    return LikelihoodResult(method.name, sign, signed, shift, best, test_totals, test, stats)


def evaluate_all(model, tokenizer, concept: Concept, methods: Mapping[str, Method], scale: float,
                 sweep: Sequence[float], *, chat: bool | None = None, batch_size: int = 32,
                 signs: Sequence[int] = (1, -1), progress: bool | None = None) -> list[LikelihoodResult]:
    """Every method with each sign; the unsteered gaps are computed once and shared.
    ``progress``: the bar's rule of :func:`svf.progress.progress_bar`."""
    base = methods["base"]
    base_val = gaps(model, tokenizer, concept, concept.validation_prompts, base, [0.0], scale, chat=chat, batch_size=batch_size)[0]
    base_test = gaps(model, tokenizer, concept, concept.test_prompts, base, [0.0], scale, chat=chat, batch_size=batch_size)[0]
    todo = [(m, sg) for name, m in methods.items() if name != "base" for sg in signs]
    out = []
    for method, sign in progress_bar(todo, desc=f"likelihood {concept.name}", enabled=progress):
        out.append(evaluate_method(model, tokenizer, concept, method, scale, sweep, sign, chat=chat,
                                   base_val=base_val, base_test=base_test, batch_size=batch_size))
    return out
