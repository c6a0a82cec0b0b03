"""Methods compared at equal fluency: how far each moves the text for a given perplexity.

Likelihood steerability does not charge for fluency, and a fixed strength is not a fair point
of comparison (one method's direction may break the text at a strength where another's is
still fluent). Here every method sweeps its *points* on validation prompts, both signs (+1
toward the concept, -1 away): a steering method its total strengths, the prompting baseline
its instruction's intensities (:data:`svf.concepts.INTENSITIES`), prompting plus steering the
plain instruction with each total strength. Each point records the judge's shift toward the
requested side, the shares of samples moved the right and wrong way, the median perplexity
of the continuations under the *unsteered* model after the *neutral* prompt (an instruction's
own text is not in the scored context, so prompting pays for the words it changes as steering
does) and their mean distinct-2 per continuation. For each fluency budget (perplexity at most
``budget`` times the unsteered one, on validation) each method keeps the point that moved the
judge most within the budget (none within it: no steering, no instruction). Every budget also
charges for repetition, which perplexity rewards (a loop of one word is easy to predict): a
point whose distinct-2 falls more than ``distinct_drop`` below the unsteered one is out. The
*test* prompts are generated once per kept (method, point), ``samples`` times each, with the
same sampling seeds for every method, and the comparisons of :data:`COMPARISONS` are paired
differences per test prompt with a bootstrap interval over prompts
(:func:`svf.eval.metrics.paired_interval`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from svf_kernels import SVFArgumentError

from ..concepts import INTENSITIES, Concept
from ..field_packing import row_field
from ..progress import progress_bar
from ..steering_field import SteeringField
from ..tokenization import encode_prompts, resolve_chat
from .continuations import sample
from .evaluate_generation import Judge, judge_scores, median_perplexity
from .methods import Method, steer_by_method
from .metrics import distinct_n_per_text, moved_shares, paired_interval

#: The SVF methods from the concept's shared field: (steering direction, closed loop at the
#: target probability or not).
SVF_VARIANTS = {
    "svf": ("gradient", False),
    "svf-closed": ("gradient", True),
    "svf-precond": ("preconditioned", False),
    "svf-natural": ("natural", False),
    "svf-natural-closed": ("natural", True),
}
#: Every method the comparison knows: the static CAA vector on the SVF layers, the SVF
#: variants, SVF from a scorer trained on inner positions too (``svf-inner``), the prompting
#: baseline and prompting plus SVF (the plain instruction with the ``svf`` field).
FLUENCY_METHODS = ("caa", *SVF_VARIANTS, "svf-inner", "prompt", "prompt+svf")
#: The groups a comparison may name instead of one method: the group's method that moved the
#: judge most on validation within the budget.
FAMILIES = {"best-static": ("caa",), "best-svf": (*SVF_VARIANTS, "svf-inner"), "best-prompt": ("prompt",)}
#: The paired comparisons reported per cell, ``(A, B)``: A's test shift minus B's.
COMPARISONS = (("best-svf", "best-static"), ("best-svf", "best-prompt"), ("prompt+svf", "best-prompt"),
               ("svf-natural", "svf"), ("svf-inner", "svf"))


@dataclass(frozen=True)
class Point:
    """One setting of a method: a total strength (0: no steering) and an instruction's
    intensity ("": no instruction)."""

    total_strength: float = 0.0
    intensity: str = ""

    @property
    def label(self) -> str:
        parts = ([f"{self.total_strength:g}"] if self.total_strength else []) + ([self.intensity] if self.intensity else [])
        return " + ".join(parts) or "none"


@dataclass(frozen=True)
class FluencyMethod:
    """A method of the comparison: its steering (None: prompting alone) and the points it sweeps."""

    name: str
    steering: Method | None
    points: tuple[Point, ...]


@dataclass(frozen=True)
class FluencySettings:
    """The sweep, the budgets and the sample sizes of the comparison. ``distinct_drop``: how far
    a point's mean distinct-2 per continuation may fall below the unsteered one at any budget."""

    total_strengths: tuple[float, ...] = (0.05, 0.15, 0.45, 1.35)
    budgets: tuple[float, ...] = (1.25, 1.5)
    distinct_drop: float = 0.1
    target: float = 0.9
    val_prompts: int = 33
    test_prompts: int = 77
    val_samples: int = 1
    samples: int = 2
    max_new_tokens: int = 32
    methods: tuple[str, ...] = ("caa", "svf", "svf-closed", "svf-precond", "prompt", "prompt+svf")
    level: float = 0.95


def fluency_methods(shared: SteeringField, layers: Sequence[int], settings: FluencySettings,
                    inner: SteeringField | None = None) -> dict[str, FluencyMethod]:
    """The methods ``settings.methods`` names, on the steering ``layers``: steering methods sweep
    ``settings.total_strengths``; ``svf-inner`` needs the field trained on inner positions
    (``inner``); ``svf-natural*`` a field with the natural direction at ``layers``."""
    unknown = [n for n in settings.methods if n not in FLUENCY_METHODS]
    if unknown:
        raise SVFArgumentError(f"unknown equal-fluency methods {unknown}; known: {list(FLUENCY_METHODS)}")
    steered = tuple(Point(t) for t in settings.total_strengths)

    def svf(name: str, source: SteeringField, direction: str, closed: bool) -> Method:
        t = settings.target if closed else None
        return Method(name, {i: row_field([source], i, "svf", direction=direction, target=t) for i in layers})

    out: dict[str, FluencyMethod] = {}
    for name in settings.methods:
        if name == "caa":
            out[name] = FluencyMethod(name, Method(name, {i: row_field([shared], i, "caa") for i in layers}), steered)
        elif name in SVF_VARIANTS:
            out[name] = FluencyMethod(name, svf(name, shared, *SVF_VARIANTS[name]), steered)
        elif name == "svf-inner":
            if inner is None:
                raise SVFArgumentError("svf-inner needs a field trained on inner positions (inner=None)")
            out[name] = FluencyMethod(name, svf(name, inner, "gradient", False), steered)
        elif name == "prompt":
            out[name] = FluencyMethod(name, None, tuple(Point(0.0, k) for k in INTENSITIES))
        else:  # prompt+svf: from the plain prompt alone (strength 0) up
            out[name] = FluencyMethod(name, svf(name, shared, "gradient", False),
                                      tuple(Point(t, "plain") for t in (0.0, *settings.total_strengths)))
    return out


def instructed(prompt: str, instruction: str, chat: bool) -> str:
    """``prompt`` with ``instruction``: appended to the user turn of a chat model, or a line
    before the prompt for plain text (a base model)."""
    return f"{prompt} {instruction}" if chat else f"{instruction}\n{prompt}"


@dataclass
class Measured:
    """One (method, sign, point) on one prompt set: judge scores ``[P, S]``, median perplexity,
    mean distinct-2 per continuation and the first prompt's first continuation."""

    scores: torch.Tensor
    ppl_median: float
    distinct2: float
    text: str


class _Runner:
    """Generates, judges and scores one prompt set under one method, sign and point; a setting
    that generates the same text as one already measured (the same prompts, samples,
    instruction and steering: e.g. a strength-0 point and the prompt alone) is measured once."""

    def __init__(self, model, tokenizer, concept: Concept, scale: float, judge: Judge,
                 s: FluencySettings, chat: bool | None, seed: int) -> None:
        self.model, self.tokenizer, self.concept, self.scale, self.judge = model, tokenizer, concept, scale, judge
        self.chat = resolve_chat(tokenizer, chat)
        self.kw = {"max_new_tokens": s.max_new_tokens, "chat": self.chat, "seed": seed}
        self.done: dict[tuple, Measured] = {}

    def measure(self, prompts: Sequence[str], samples: int, method: FluencyMethod | None, sign: int,
                point: Point) -> Measured:
        steered = method is not None and method.steering is not None and point.total_strength != 0
        key = (tuple(prompts), samples, point.intensity and sign, point.intensity,
               (method.name, sign, point.total_strength) if steered else None)
        if key not in self.done:
            self.done[key] = self._measure(prompts, samples, method, sign, point)
        return self.done[key]

    def _measure(self, prompts: Sequence[str], samples: int, method: FluencyMethod | None, sign: int,
                 point: Point) -> Measured:
        texts = list(prompts)
        if point.intensity:
            instruction = self.concept.instruction(sign, point.intensity)
            texts = [instructed(p, instruction, self.chat) for p in prompts]
        steering = method.steering if method is not None else None
        ctx = (steer_by_method(self.model, steering, sign * point.total_strength, self.scale)
               if steering is not None and point.total_strength else nullcontext())
        with ctx:
            cont = sample(self.model, self.tokenizer, texts, samples=samples, **self.kw)
        if point.intensity:  # fluency is scored after the neutral prompt, as for steering
            ids, mask = encode_prompts(self.tokenizer, [p for p in prompts for _ in range(samples)], self.chat)
            cont = dataclasses.replace(cont, prompt_ids=ids, prompt_mask=mask)
        distinct = distinct_n_per_text(cont.tokens, 2)
        return Measured(judge_scores(self.judge, cont), median_perplexity(self.model, cont),
                        sum(distinct) / len(distinct), cont.texts[0])


def _summary(m: Measured, base: Measured, sign: int) -> dict:
    shares = moved_shares(base.scores, m.scores, sign)
    return {"delta": sign * float(m.scores.mean() - base.scores.mean()), "right": shares["right"],
            "wrong": shares["wrong"], "ppl_median": m.ppl_median, "distinct2": m.distinct2}


def prompt_shifts(m: Measured, base: Measured, sign: int) -> torch.Tensor:
    """Per prompt, the mean judge shift toward the requested side from the unsteered mean ``[P]``."""
    return sign * (m.scores.mean(1) - base.scores.mean(1))


def choose_point(rows: Sequence[dict], base: Mapping, budget: float, distinct_drop: float) -> dict | None:
    """The validation row with the largest judge shift among those whose perplexity stays
    within ``budget`` times the unsteered row ``base``'s, whose distinct-2 is at most
    ``distinct_drop`` below ``base``'s and that moved the judge the requested way (ties: the
    earlier row, i.e. the milder point); None when none does."""
    ok = [(k, r) for k, r in enumerate(rows)
          if r["ppl_median"] <= budget * base["ppl_median"] and r["distinct2"] >= base["distinct2"] - distinct_drop
          and r["delta"] > 0]
    return max(ok, key=lambda kr: (kr[1]["delta"], -kr[0]))[1] if ok else None


def _key(concept: str, sign: int, method: str, point: Point) -> tuple:
    return (concept, int(sign), method, float(point.total_strength), point.intensity)


def equal_fluency(model, tokenizer, concept: Concept, methods: Mapping[str, FluencyMethod], scale: float,
                  judge: Judge, settings: FluencySettings | None = None, *,
                  chat: bool | None = None, seed: int = 0, examples: list | None = None,
                  progress: bool | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """The validation sweep, the test rows at equal fluency and the per-prompt test shifts for
    one concept.

    Returns ``(sweep, chosen, per_prompt)``: ``sweep`` one row per method, sign and point on
    validation prompts (plus the unsteered row); ``chosen`` one row per budget, sign and method
    with the test measures at the point kept on validation; ``per_prompt`` the test shift of
    every measured (sign, method, point) per prompt, the input of :func:`verdicts`.
    ``examples``: where each test-measured point's first continuation is appended. ``progress``: the bars' rule of :func:`svf.progress.progress_bar`."""
    s = settings or FluencySettings()
    val = concept.validation_prompts[: s.val_prompts]
    test = concept.test_prompts[: s.test_prompts]
    if len(val) < 1 or len(test) < 2:
        raise SVFArgumentError(f"concept {concept.name!r} has {len(val)} validation and {len(test)} test "
                               "prompts; the comparison needs at least 1 and 2")
    run = _Runner(model, tokenizer, concept, scale, judge, s, chat, seed)
    base_val = run.measure(val, s.val_samples, None, 1, Point())
    base_test = run.measure(test, s.samples, None, 1, Point())
    name = concept.name
    sweep = [{"concept": name, "method": "base", "sign": 0, "total_strength": 0.0, "intensity": "",
              "delta": 0.0, "right": 0.0, "wrong": 0.0, "ppl_median": base_val.ppl_median,
              "distinct2": base_val.distinct2, "n_prompts": len(val), "samples": s.val_samples}]
    todo = [(m, sg, pt) for m in methods.values() for sg in (1, -1) for pt in m.points]
    for method, sign, point in progress_bar(todo, desc=f"equal fluency {name}: validation", enabled=progress):
        m = run.measure(val, s.val_samples, method, sign, point)
        sweep.append({"concept": name, "method": method.name, "sign": sign,
                      "total_strength": point.total_strength, "intensity": point.intensity,
                      **_summary(m, base_val, sign), "n_prompts": len(val), "samples": s.val_samples})
    picks = []
    for budget in s.budgets:
        for sign in (1, -1):
            for method in methods.values():
                rows = [r for r in sweep if r["method"] == method.name and r["sign"] == sign]
                best = choose_point(rows, sweep[0], budget, s.distinct_drop)
                point = Point(best["total_strength"], best["intensity"]) if best else Point()
                picks.append((budget, sign, method.name, point, best["delta"] if best else 0.0))
    measured = {("base", 0, Point()): base_test}
    need = sorted({(n, sg, pt) for _, sg, n, pt, _ in picks if pt != Point()},
                  key=lambda x: (x[0], -x[1], x[2].total_strength, x[2].intensity))
    for mname, sign, point in progress_bar(need, desc=f"equal fluency {name}: test", enabled=progress):
        measured[(mname, sign, point)] = run.measure(test, s.samples, methods[mname], sign, point)
    chosen = []
    for budget, sign, mname, point, val_delta in picks:
        m = measured[(mname, sign, point) if point != Point() else ("base", 0, Point())]
        interval = paired_interval(prompt_shifts(m, base_test, sign), level=s.level, seed=seed)
        chosen.append({"concept": name, "budget": budget, "sign": sign, "method": mname,
                       "total_strength": point.total_strength, "intensity": point.intensity,
                       "val_delta": val_delta, **_summary(m, base_test, sign),
                       "delta_lo": interval["lo"], "delta_hi": interval["hi"],
                       "base_ppl": base_test.ppl_median, "base_distinct2": base_test.distinct2,
                       "n_prompts": len(test), "samples": s.samples})
    per_prompt = []
    for (mname, sign, point), m in measured.items():
        if examples is not None:
            examples.append({"concept": name, "method": mname, "sign": sign, "total_strength": point.total_strength,
                             "intensity": point.intensity, "prompt": test[0], "text": m.text})
        for sg in ((1, -1) if mname == "base" else (sign,)):
            per_prompt += [{"concept": name, "sign": sg, "method": mname, "total_strength": point.total_strength,
                            "intensity": point.intensity, "prompt": k, "shift": float(v)}
                           for k, v in enumerate(prompt_shifts(m, base_test, sg))]
    return sweep, chosen, per_prompt


def _point_of(row: Mapping) -> Point:
    return Point(float(row["total_strength"]), row.get("intensity") or "")


def _pick(rows: Sequence[Mapping], side: str) -> Mapping | None:
    """The chosen row a comparison's side names: one method, or its family's method with the
    largest validation shift (ties: the family's earlier method)."""
    names = FAMILIES.get(side, (side,))
    cands = [r for n in names for r in rows if r["method"] == n]
    return max(cands, key=lambda r: float(r["val_delta"])) if cands else None


def verdicts(chosen: Sequence[Mapping], per_prompt: Sequence[Mapping],
             comparisons: Sequence[tuple[str, str]] = COMPARISONS, *, level: float = 0.95,
             seed: int = 0) -> list[dict]:
    """Per (concept, budget, sign) cell and comparison ``(A, B)`` (:data:`COMPARISONS`): the
    methods each side kept, their test shifts and perplexities, and the paired difference of
    per-prompt test shifts A - B with its bootstrap interval and verdict
    (:func:`svf.eval.metrics.paired_interval`). Rows may come from CSV files (strings).
    A comparison whose methods were not both run is left out."""
    shifts: dict[tuple, dict[int, float]] = {}
    for r in per_prompt:
        key = _key(r["concept"], int(r["sign"]), r["method"], _point_of(r))
        shifts.setdefault(key, {})[int(r["prompt"])] = float(r["shift"])
    cells = sorted({(r["concept"], float(r["budget"]), int(r["sign"])) for r in chosen},
                   key=lambda c: (c[0], -c[2], c[1]))
    out = []
    for concept, budget, sign in cells:
        rows = [r for r in chosen if (r["concept"], float(r["budget"]), int(r["sign"])) == (concept, budget, sign)]
        for a_side, b_side in comparisons:
            a, b = _pick(rows, a_side), _pick(rows, b_side)
            if a is None or b is None:
                continue
            per = []
            for r in (a, b):
                point = _point_of(r)
                key = _key(concept, sign, "base" if point == Point() else r["method"], point)
                if key not in shifts:
                    raise SVFArgumentError(f"no per-prompt shifts for {key}: the per-prompt table does not "
                                           "belong to these chosen rows")
                per.append(shifts[key])
            common = sorted(set(per[0]) & set(per[1]))
            stats = paired_interval([per[0][k] - per[1][k] for k in common], level=level, seed=seed)
            out.append({"concept": concept, "budget": budget, "sign": sign, "comparison": f"{a_side} vs {b_side}",
                        "a": f"{a['method']} @ {_point_of(a).label}", "a_delta": float(a["delta"]),
                        "a_ppl": float(a["ppl_median"]),
                        "b": f"{b['method']} @ {_point_of(b).label}", "b_delta": float(b["delta"]),
                        "b_ppl": float(b["ppl_median"]), **stats})
    return out
