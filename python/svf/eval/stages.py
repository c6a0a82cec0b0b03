"""The stages of ``svf eval``: :data:`STAGES`, the one list of what a run can hold, in running order.

A :class:`Stage` has a name (what ``EvalConfig.stages`` and ``svf eval --stages`` take), says
when it runs (``when``) and does its work (``do``, which fills the run's tables). :func:`plan`
makes the steps of a run from a configuration, in order and by name; the report's status and
timings use those names, and :func:`svf.eval.evaluation.run_eval` runs exactly those steps.

A per-concept stage runs once for each concept (step ``"<concept>: <stage>"``), after that
concept's fields are trained (step ``"<concept>: train + choose layers"``,
:func:`svf.eval.concept_fields.prepare`). A concept is trained when one of its stages runs, or
when a once-per-run stage that reads every concept's fields (``uses_fields``) runs. Once-per-run
stages listed before the first per-concept stage run before the concepts, the others after them.

This module imports without the evaluation's optional packages (a concept's judges load when a
stage first judges text), so ``svf eval --stages`` checks its names without them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..concepts import Concept
from . import evaluate_mwe
from .concept_fields import Prepared, prepare
from .evaluate_fluency import FluencySettings, equal_fluency, fluency_methods, verdicts
from .evaluate_generation import Judge, long_form, multi_attribute, open_ended
from .evaluate_likelihood import LikelihoodResult, evaluate_all
from .methods import Method

if TYPE_CHECKING:
    from .config import EvalConfig

#: The report's tables (``<key>.csv``), each filled by the stages.
TABLES = ("likelihood", "sweeps", "slopes", "open_ended", "long_form", "multi_attribute", "mwe", "judges",
          "fluency_sweep", "equal_fluency", "fluency_prompts", "fluency_verdicts")


@dataclass
class EvalRun:
    """What the steps of one run share: what they read (the model, the configuration with its
    layers filled in, each concept's data with its prompts capped at ``cfg.n_prompts`` and
    ``uncapped``, the report directory, the progress-bar rule of
    :func:`svf.progress.progress_bar`) and what they fill (the report's tables and examples,
    each concept's prepared fields and its judges)."""

    model: nn.Module
    tokenizer: Any
    cfg: EvalConfig
    concepts: dict[str, Concept]
    out: Path
    uncapped: dict[str, Concept] = field(default_factory=dict)
    model_name: str = ""
    progress: bool | None = None
    field_cache: Path | None = None
    tables: dict[str, list[dict]] = field(default_factory=lambda: {key: [] for key in TABLES})
    examples: list[dict] = field(default_factory=list)
    prepared: dict[str, Prepared] = field(default_factory=dict)
    loaded_judges: dict[str, dict[str, Judge]] = field(default_factory=dict)

    def judges(self, concept: str) -> dict[str, Judge]:
        """``concept``'s judges (:func:`svf.eval.judges.concept_judges`), loaded on first use,
        when their held-out accuracies join the ``judges`` table."""
        if concept not in self.loaded_judges:
            # the judges need the 'eval' extra's packages: imported once a stage judges text
            from . import judges

            self.loaded_judges[concept], accuracy = judges.concept_judges(self.concepts[concept])
            self.tables["judges"].append({"concept": concept, **accuracy})
        return self.loaded_judges[concept]


# -- what each stage does (``concept``: the concept's name; None for a once-per-run stage) -------


def _train(run: EvalRun, concept: str) -> None:
    """Train the concept's fields and build its methods (:func:`prepare`); the choices made on
    validation go to ``<concept>_choices.json``."""
    prep = prepare(run.model, run.tokenizer, run.concepts[concept], run.cfg, run.model_name,
                   field_cache=run.field_cache)
    (run.out / f"{concept}_choices.json").write_text(json.dumps(prep.info, indent=1, default=float) + "\n")
    run.prepared[concept] = prep


def _mwe(run: EvalRun, concept: None) -> None:
    cfg = run.cfg
    run.tables["mwe"] = evaluate_mwe.run_mwe(
        run.model, run.tokenizer, cfg.mwe_behaviors, train_layers=cfg.train_layers,
        steer_layers=cfg.steer_layers, sweep=cfg.sweep, n_items=cfg.mwe_items, train_config=cfg.train,
        seed=cfg.seed, model_name=run.model_name, progress=run.progress)


def _likelihood_rows(concept: str, results: Sequence[LikelihoodResult], methods: dict[str, Method]):
    """The ``likelihood``, ``sweeps`` and ``slopes`` rows of one concept's results."""
    rows, sweeps, slopes = [], [], []
    for r in results:
        rows.append({"concept": concept, **r.row(), "layers": "+".join(map(str, methods[r.method].layers))})
        sweeps += [{"concept": concept, "method": r.method, "total_strength": s, "gap_shift": r.sign * v}
                   for s, v in zip(r.sweep, r.val_shift)]
        slopes += [{"concept": concept, "method": r.method, "sign": r.sign, "prompt": i, "slope": float(v)}
                   for i, v in enumerate(r.stats["slope"])]
    return rows, sweeps, slopes


def _likelihood(run: EvalRun, concept: str) -> None:
    prep, cfg = run.prepared[concept], run.cfg
    results = evaluate_all(run.model, run.tokenizer, run.concepts[concept], prep.methods, prep.scale, cfg.sweep,
                           chat=cfg.chat, signs=cfg.signs, progress=run.progress)
    for key, rows in zip(("likelihood", "sweeps", "slopes"), _likelihood_rows(concept, results, prep.methods)):
        run.tables[key] += rows


def _open_ended(run: EvalRun, concept: str) -> None:
    prep, cfg = run.prepared[concept], run.cfg
    run.tables["open_ended"] += open_ended(
        run.model, run.tokenizer, run.concepts[concept], prep.methods, prep.scale, cfg.gen_total_strengths,
        run.judges(concept), n_prompts=cfg.gen_prompts, samples=cfg.gen_samples, max_new_tokens=cfg.gen_tokens,
        chat=cfg.chat, seed=cfg.seed, examples=run.examples, progress=run.progress)


def _long_form(run: EvalRun, concept: str) -> None:
    prep, cfg = run.prepared[concept], run.cfg
    run.tables["long_form"] += long_form(
        run.model, run.tokenizer, run.concepts[concept], prep.methods, prep.scale, max(cfg.gen_total_strengths),
        run.judges(concept)["embed"], refreshes=cfg.long_refresh, n_prompts=cfg.long_prompts,
        length=cfg.long_tokens, window=cfg.long_window, chat=cfg.chat, seed=cfg.seed, progress=run.progress)


def _fluency_settings(cfg: EvalConfig) -> FluencySettings:
    """The equal-fluency comparison's settings of ``cfg``."""
    return FluencySettings(total_strengths=cfg.fluency_strengths, budgets=cfg.fluency_budgets,
                           distinct_drop=cfg.fluency_distinct_drop, target=cfg.fluency_target, val_prompts=cfg.fluency_val_prompts,
                           test_prompts=cfg.fluency_test_prompts, val_samples=cfg.fluency_val_samples,
                           samples=cfg.fluency_samples, max_new_tokens=cfg.fluency_tokens,
                           methods=cfg.fluency_methods)


def _equal_fluency(run: EvalRun, concept: str) -> None:
    """The comparison on the concept's own prompt split, whatever ``cfg.n_prompts`` caps for
    the other stages (its sizes are ``cfg.fluency_*``)."""
    prep, cfg = run.prepared[concept], run.cfg
    settings = _fluency_settings(cfg)
    methods = fluency_methods(prep.shared, cfg.steer_layers, settings, inner=prep.inner)
    sweep, chosen, per_prompt = equal_fluency(
        run.model, run.tokenizer, run.uncapped.get(concept, run.concepts[concept]), methods, prep.scale,
        run.judges(concept)["embed"], settings, chat=cfg.chat, seed=cfg.seed, examples=run.examples,
        progress=run.progress)
    run.tables["fluency_sweep"] += sweep
    run.tables["equal_fluency"] += chosen
    run.tables["fluency_prompts"] += per_prompt
    run.tables["fluency_verdicts"] = verdicts(run.tables["equal_fluency"], run.tables["fluency_prompts"],
                                              seed=cfg.seed)


def _multi_attribute(run: EvalRun, concept: None) -> None:
    """The first 2 and 3 concepts at once, at the mean strength scale of every concept, on the
    first concept's test prompts."""
    cfg = run.cfg
    combos = [cfg.concepts[:n] for n in (2, 3) if len(cfg.concepts) >= n]
    scales = [run.prepared[c].scale for c in cfg.concepts]
    run.tables["multi_attribute"] = multi_attribute(
        run.model, run.tokenizer, {c: run.prepared[c].shared for c in cfg.concepts}, cfg.steer_layers,
        sum(scales) / len(scales), max(cfg.gen_total_strengths), {c: run.judges(c)["embed"] for c in cfg.concepts},
        run.concepts[cfg.concepts[0]].test_prompts[: cfg.gen_prompts], combos=combos,
        samples=cfg.multi_samples, max_new_tokens=cfg.gen_tokens, chat=cfg.chat, seed=cfg.seed,
        progress=run.progress)


# -- when a stage runs (given that ``EvalConfig.stages`` names it) --------------------------------


def _always(cfg: EvalConfig, index: int | None) -> bool:
    return True


def _with_mwe_behaviors(cfg: EvalConfig, index: None) -> bool:
    return bool(cfg.mwe_behaviors)


def _first_concept(cfg: EvalConfig, index: int) -> bool:
    return index == 0


def _several_concepts(cfg: EvalConfig, index: None) -> bool:
    return len(cfg.concepts) >= 2


@dataclass(frozen=True)
class Stage:
    """One stage of ``svf eval``.

    ``name``: what ``EvalConfig.stages`` and ``svf eval --stages`` take; ``do(run, concept)``:
    what it does; ``per_concept``: once per concept (``concept`` its name) or once per run
    (``concept`` None); ``when(cfg, index)``: whether it runs, when ``cfg.stages`` names it
    (``index``: the concept's index in ``cfg.concepts``; None for a once-per-run stage);
    ``uses_fields``: a once-per-run stage that reads every concept's trained fields."""

    name: str
    do: Callable[[EvalRun, str | None], None]
    per_concept: bool = True
    when: Callable[[EvalConfig, int | None], bool] = _always
    uses_fields: bool = False


#: Every stage, in running order.
STAGES: tuple[Stage, ...] = (
    Stage("mwe", _mwe, per_concept=False, when=_with_mwe_behaviors),
    Stage("likelihood", _likelihood),
    Stage("open-ended", _open_ended),
    Stage("long-form", _long_form, when=_first_concept),
    Stage("equal-fluency", _equal_fluency),
    Stage("multi-attribute", _multi_attribute, per_concept=False, when=_several_concepts, uses_fields=True),
)

#: The stages' names: what ``EvalConfig.stages`` and ``svf eval --stages`` accept.
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


@dataclass(frozen=True)
class Step:
    """One timed step of a run: a stage for one concept or for the run, or a concept's
    training. ``name``: the report's name for it (status and time per stage)."""

    name: str
    do: Callable[[EvalRun], None]


def plan(cfg: EvalConfig) -> list[Step]:
    """The steps of a run of ``cfg``, in order: the stages ``cfg.stages`` names, where their
    ``when`` holds, arranged as the module docstring says."""
    selected = [(k, s) for k, s in enumerate(STAGES) if s.name in cfg.stages]
    first = next((k for k, s in enumerate(STAGES) if s.per_concept), len(STAGES))
    once = [(k, s) for k, s in selected if not s.per_concept and s.when(cfg, None)]
    before = [Step(s.name, partial(s.do, concept=None)) for k, s in once if k < first]
    after = [Step(s.name, partial(s.do, concept=None)) for k, s in once if k > first]
    train_every_concept = any(s.uses_fields for _, s in once)
    concepts: list[Step] = []
    for index, name in enumerate(cfg.concepts):
        own = [s for _, s in selected if s.per_concept and s.when(cfg, index)]
        if own or train_every_concept:
            concepts.append(Step(f"{name}: train + choose layers", partial(_train, concept=name)))
        concepts += [Step(f"{name}: {s.name}", partial(s.do, concept=name)) for s in own]
    return before + concepts + after
