"""Methods compared at equal fluency: how far each moves the text for a given perplexity.

Likelihood steerability does not charge for fluency, and a fixed strength is not a fair point
of comparison (one method's direction may break the text at a strength where another's is
still fluent). Here every method sweeps its total strength on *validation* prompts, both
signs (+1 toward the concept, -1 away), recording the judge's shift toward the requested side, the shares of samples moved
the right and wrong way, and the median perplexity of the continuations under the *unsteered*
model. For each fluency budget (perplexity at most ``budget`` times the unsteered one, on
validation), each method keeps the strength that moved the judge most within the budget
(none within it: strength 0, no effect). The *test* prompts are then generated once per kept
(method, strength) for the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from svf_kernels import RowField

from ..concepts import Concept
from ..field_packing import row_field
from ..progress import progress_bar
from ..steering_field import SteeringField
from .continuations import sample
from .evaluate_generation import Judge, judge_scores, median_perplexity
from .methods import Method, steer_by_method
from .metrics import moved_shares

#: The SVF variants: (steering direction, closed loop at the target probability or not).
SVF_VARIANTS = {
    "svf": ("gradient", None),
    "svf-precond": ("preconditioned", None),
    "svf-closed": ("gradient", "target"),
    "svf-precond-closed": ("preconditioned", "target"),
}


@dataclass(frozen=True)
class FluencySettings:
    """The sweep, the budgets and the sample sizes of the comparison."""

    total_strengths: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6)
    budgets: tuple[float, ...] = (1.25, 1.5)
    target: float = 0.9
    val_prompts: int = 12
    test_prompts: int = 24
    samples: int = 1
    max_new_tokens: int = 32


def fluency_methods(shared: SteeringField, layers: Sequence[int], target: float,
                    knn: Mapping[int, RowField] | None = None) -> dict[str, Method]:
    """CAA on the SVF layers, KNN (when given) and the four SVF variants (plain and
    preconditioned direction, each open and closed loop at ``target``)."""
    out = {"caa-multi": Method("caa-multi", {i: row_field([shared], i, "caa") for i in layers})}
    if knn is not None:
        out["knn"] = Method("knn", {i: knn[i] for i in layers})
    for name, (direction, closed) in SVF_VARIANTS.items():
        t = target if closed else None
        out[name] = Method(name, {i: row_field([shared], i, "svf", direction=direction, target=t)
                                  for i in layers})
    return out


class _Runner:
    """Generates, judges and scores one prompt set under one method and strength."""

    def __init__(self, model, tokenizer, scale: float, judge: Judge, s: FluencySettings,
                 chat: bool | None, seed: int) -> None:
        self.model, self.tokenizer, self.scale, self.judge = model, tokenizer, scale, judge
        self.kw = {"samples": s.samples, "max_new_tokens": s.max_new_tokens, "chat": chat, "seed": seed}

    def base(self, prompts: Sequence[str]) -> tuple[torch.Tensor, float]:
        cont = sample(self.model, self.tokenizer, prompts, **self.kw)
        return judge_scores(self.judge, cont), median_perplexity(self.model, cont)

    def row(self, prompts: Sequence[str], method: Method, sign: int, total: float,
            base: torch.Tensor) -> dict:
        with steer_by_method(self.model, method, sign * total, self.scale):
            cont = sample(self.model, self.tokenizer, prompts, **self.kw)
        scores = judge_scores(self.judge, cont)
        shares = moved_shares(base, scores, sign)
        return {"delta": sign * float(scores.mean() - base.mean()), "right": shares["right"],
                "wrong": shares["wrong"], "ppl_median": median_perplexity(self.model, cont)}


def choose_strength(rows: Sequence[dict], base_ppl: float, budget: float) -> dict | None:
    """The validation row with the largest judge shift among those whose perplexity stays
    within ``budget`` times ``base_ppl`` (ties: the smaller strength); None when none does."""
    ok = [r for r in rows if r["ppl_median"] <= budget * base_ppl and r["delta"] > 0]
    return max(ok, key=lambda r: (r["delta"], -r["total_strength"])) if ok else None


def equal_fluency(model, tokenizer, concept: Concept, methods: Mapping[str, Method], scale: float,
                  judge: Judge, settings: FluencySettings | None = None, *,
                  chat: bool | None = None, seed: int = 0,
                  progress: bool | None = None) -> tuple[list[dict], list[dict]]:
    """The validation sweep and the test rows at equal fluency for one concept.

    Returns ``(sweep, chosen)``: ``sweep`` one row per method, sign and total strength on
    validation prompts (plus the unsteered row); ``chosen`` one row per budget, sign and
    method with the test-prompt measures at the strength kept on validation. ``progress``: the
    bars' rule of :func:`svf.progress.progress_bar`."""
    s = settings or FluencySettings()
    val = concept.validation_prompts[: s.val_prompts]
    test = concept.test_prompts[: s.test_prompts]
    run = _Runner(model, tokenizer, scale, judge, s, chat, seed)
    base_val, ppl_val = run.base(val)
    base_test, ppl_test = run.base(test)
    sweep = [{"concept": concept.name, "method": "base", "sign": 0, "total_strength": 0.0,
              "delta": 0.0, "right": 0.0, "wrong": 0.0, "ppl_median": ppl_val, "n_prompts": len(val)}]
    todo = [(m, sg, t) for m in methods.values() for sg in (1, -1) for t in s.total_strengths]
    for method, sign, total in progress_bar(todo, desc=f"equal fluency {concept.name}: validation",
                                            enabled=progress):
        sweep.append({"concept": concept.name, "method": method.name, "sign": sign,
                      "total_strength": total, **run.row(val, method, sign, total, base_val),
                      "n_prompts": len(val)})
    picks = []
    for budget in s.budgets:
        for sign in (1, -1):
            for name in methods:
                rows = [r for r in sweep if r["method"] == name and r["sign"] == sign]
                best = choose_strength(rows, ppl_val, budget) or {"total_strength": 0.0, "delta": 0.0}
                picks.append((budget, sign, name, best["total_strength"], best["delta"]))
    measured: dict[tuple[str, int, float], dict] = {}
    need = sorted({(n, sg, t) for _, sg, n, t, _ in picks if t > 0})
    for name, sign, total in progress_bar(need, desc=f"equal fluency {concept.name}: test", enabled=progress):
        measured[(name, sign, total)] = run.row(test, methods[name], sign, total, base_test)
    unmoved = {"delta": 0.0, "right": 0.0, "wrong": 0.0, "ppl_median": ppl_test}
    chosen = [{"concept": concept.name, "budget": budget, "sign": sign, "method": name,
               "total_strength": total, "val_delta": val_delta,
               **measured.get((name, sign, total), unmoved), "base_ppl": ppl_test,
               "n_prompts": len(test)}
              for budget, sign, name, total, val_delta in picks]
    return sweep, chosen


def verdicts(chosen: Sequence[dict]) -> list[dict]:
    """Per concept, budget and sign: the SVF variant and the CAA method that moved the
    judge most on *validation* within the budget, their test shifts, and whether SVF moved the
    test text at least as far."""
    out = []
    keys = sorted({(r["concept"], r["budget"], r["sign"]) for r in chosen})
    for concept, budget, sign in keys:
        rows = [r for r in chosen if (r["concept"], r["budget"], r["sign"]) == (concept, budget, sign)]
        svf = max((r for r in rows if r["method"].startswith("svf")), key=lambda r: r["val_delta"], default=None)
        caa = max((r for r in rows if r["method"].startswith("caa")), key=lambda r: r["val_delta"], default=None)
        if svf is None or caa is None:
            continue
        out.append({"concept": concept, "budget": budget, "sign": sign,
                    "best_svf": svf["method"], "svf_delta": svf["delta"], "svf_ppl": svf["ppl_median"],
                    "caa_delta": caa["delta"], "caa_ppl": caa["ppl_median"],
                    "svf_at_least_caa": svf["delta"] >= caa["delta"]})
    return out
