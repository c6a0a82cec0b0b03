"""Open-ended, long-form and multi-attribute evaluation.

Continuations are sampled under each method at *matched total displacement* (a total strength,
split over the layers a method steers, :func:`svf.eval.methods.steer_by_method`), judged by judges
independent of the steered model (scores in [-1, 1], + = the concept's positive side), and
scored for fluency (perplexity under the *unsteered* model) and repetition (distinct-2).
Total strengths are fixed in the configuration, the same for every method, so nothing here is
chosen on test prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from statistics import median

import torch

from ..concepts import Concept
from ..progress import progress_bar
from ..steering import steer
from ..steering_field import SteeringField
from .continuations import Continuations, perplexity, sample, token_nll
from .methods import Method, layer_alpha, steer_by_method
from .metrics import distinct_n, distinct_n_per_text, moved_shares, window_scores

#: A judge maps texts to scores in [-1, 1] (+ = the concept's positive side).
Judge = Callable[[Sequence[str]], list[float]]


def judge_scores(judge: Judge, cont: Continuations) -> torch.Tensor:
    """``[P, S]`` judge scores."""
    return torch.tensor(judge(cont.texts), dtype=torch.float64).view(cont.n_prompts, cont.samples)


def median_perplexity(model, cont: Continuations) -> float:
    """Median perplexity of the continuations under ``model`` as called (NaN when all are empty)."""
    ppl = [perplexity(x) for x in token_nll(model, cont) if x.numel()]
    return median(ppl) if ppl else float("nan")


def _fluency(model, cont: Continuations) -> dict:
    return {"ppl_median": median_perplexity(model, cont),
            "distinct2": distinct_n(cont.tokens, 2),
            "distinct2_per_text": sum(distinct_n_per_text(cont.tokens, 2)) / len(cont.tokens),
            "mean_tokens": sum(len(t) for t in cont.tokens) / len(cont.tokens)}


def _judged_row(base: Mapping[str, torch.Tensor], steered: Mapping[str, torch.Tensor], sign: int) -> dict:
    row = {}
    for name, s in steered.items():
        shares = moved_shares(base[name], s, sign)
        row[f"{name}_score"] = float(s.mean())
        row[f"{name}_delta"] = sign * float(s.mean() - base[name].mean())
        row[f"{name}_right"] = shares["right"]
        row[f"{name}_wrong"] = shares["wrong"]
    return row


def open_ended(model, tokenizer, concept: Concept, methods: Mapping[str, Method], scale: float,
               total_strengths: Sequence[float], judges: Mapping[str, Judge], *,
               n_prompts: int | None = None, samples: int = 3, max_new_tokens: int = 48,
               chat: bool | None = None, seed: int = 0, examples: list | None = None,
               progress: bool | None = None) -> list[dict]:
    """Every method, both signs (+1 toward the concept, -1 away), every total strength, on the
    concept's first ``n_prompts`` test prompts (all when None): per judge the mean score, the
    shift toward the requested side, and the shares of samples moved the right / wrong way from
    their prompt's unsteered mean; fluency and repetition. ``progress``: the bar's rule of
    :func:`svf.progress.progress_bar`."""
    prompts = concept.test_prompts[:n_prompts]
    kw = {"samples": samples, "max_new_tokens": max_new_tokens, "chat": chat, "seed": seed}
    base_cont = sample(model, tokenizer, prompts, **kw)
    base = {name: judge_scores(j, base_cont) for name, j in judges.items()}
    rows = [{"concept": concept.name, "method": "base", "layers": "", "sign": 0, "total_strength": 0.0,
             **{f"{name}_score": float(b.mean()) for name, b in base.items()},
             **_fluency(model, base_cont), "n_prompts": len(prompts),
             "samples": samples}]
    if examples is not None:
        examples.append({"concept": concept.name, "method": "base", "sign": 0, "total_strength": 0.0,
                         "prompt": prompts[0], "text": base_cont.texts[0]})
    todo = [(m, sg, s) for m in methods.values() if m.fields for sg in (1, -1) for s in total_strengths]
    for method, sign, total in progress_bar(todo, desc=f"open-ended {concept.name}", enabled=progress):
        with steer_by_method(model, method, sign * total, scale):
            cont = sample(model, tokenizer, prompts, **kw)
        scores = {name: judge_scores(j, cont) for name, j in judges.items()}
        rows.append({"concept": concept.name, "method": method.name,
                     "layers": "+".join(map(str, method.layers)), "sign": sign,
                     "total_strength": total, **_judged_row(base, scores, sign),
                     **_fluency(model, cont), "n_prompts": len(prompts), "samples": samples})
        if examples is not None:
            examples.append({"concept": concept.name, "method": method.name, "sign": sign,
                             "total_strength": total, "prompt": prompts[0], "text": cont.texts[0]})
    return rows


def long_form(model, tokenizer, concept: Concept, methods: Mapping[str, Method], scale: float,
              total_strength: float, judge: Judge, *, refreshes: Sequence[int] = (1, 2, 4),
              n_prompts: int = 16, length: int = 256, window: int = 32, chat: bool | None = None,
              seed: int = 0, progress: bool | None = None) -> list[dict]:
    """``length``-token continuations (end of sequence suppressed) toward the concept at
    ``total_strength``, scored per ``window``-token window: judge score and unsteered
    perplexity, for the unsteered model, static CAA on the SVF layers, and shared-space SVF at
    each refresh interval K."""
    prompts = concept.test_prompts[:n_prompts]
    runs = [("base", methods["base"], 1), ("caa-multi", methods["caa-multi"], 1)]
    runs += [(f"svf-shared K={k}", methods["svf-shared"], k) for k in refreshes]
    rows = []
    for label, method, k in progress_bar(runs, desc=f"long-form {concept.name}", enabled=progress):
        total = total_strength if method.fields else 0.0
        with steer_by_method(model, method, total, scale, refresh=k):
            cont = sample(model, tokenizer, prompts, samples=1, max_new_tokens=length,
                          min_new_tokens=length, chat=chat, seed=seed)
        nll = token_nll(model, cont)
        for w, (a, b) in enumerate(window_scores(list(range(length)), window)):
            pieces = [(t[a:b], x[a:b]) for t, x in zip(cont.tokens, nll) if len(t) >= b]
            if not pieces:
                continue
            texts = tokenizer.batch_decode([p for p, _ in pieces], skip_special_tokens=True)
            rows.append({"concept": concept.name, "run": label, "method": method.name, "refresh": k,
                         "total_strength": total, "window": w, "start": a,
                         "score": sum(judge(texts)) / len(texts),
                         "ppl_median": median(perplexity(x) for _, x in pieces),
                         "distinct2": distinct_n([p for p, _ in pieces], 2), "n": len(pieces)})
    return rows


def multi_attribute(model, tokenizer, fields: Mapping[str, SteeringField], layers: Sequence[int],
                    scale: float, total_strength: float, judges: Mapping[str, Judge],
                    prompts: Sequence[str], *, combos: Sequence[Sequence[str]],
                    samples: int = 2, max_new_tokens: int = 48, chat: bool | None = None,
                    seed: int = 0, progress: bool | None = None) -> list[dict]:
    """Several concepts at once: SVF's softmin composition (DESIGN.md §2) against the sum of
    the concepts' unit CAA vectors, at the same total displacement; per component concept,
    its judge's shift toward it and the right/wrong shares; fluency and repetition."""
    kw = {"samples": samples, "max_new_tokens": max_new_tokens, "chat": chat, "seed": seed}
    base_cont = sample(model, tokenizer, prompts, **kw)
    base = {c: judge_scores(judges[c], base_cont) for c in fields}
    rows = [{"combo": "", "method": "base", "total_strength": 0.0, **_fluency(model, base_cont),
             **{f"{c}_score": float(base[c].mean()) for c in fields}}]
    per_layer = layer_alpha(total_strength, scale, len(layers))
    todo = [(combo, m) for combo in combos for m in ("svf", "caa")]
    for combo, method in progress_bar(todo, desc="multi-attribute", enabled=progress):
        with steer(model, [fields[c] for c in combo], alpha=per_layer, layers=layers, method=method):
            cont = sample(model, tokenizer, prompts, **kw)
        row = {"combo": "+".join(combo), "method": "softmin-svf" if method == "svf" else "summed-caa",
               "total_strength": total_strength, **_fluency(model, cont)}
        for c in combo:
            s = judge_scores(judges[c], cont)
            shares = moved_shares(base[c], s, 1)
            row.update({f"{c}_score": float(s.mean()), f"{c}_delta": float(s.mean() - base[c].mean()),
                        f"{c}_right": shares["right"], f"{c}_wrong": shares["wrong"]})
        rows.append(row)
    return rows
