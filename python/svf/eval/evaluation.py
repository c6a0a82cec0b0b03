"""``svf eval``: train each concept's fields, build every method, measure, write a report.

This module orchestrates; the measures live in :mod:`svf.eval.metrics`, the likelihood protocol in
:mod:`svf.eval.evaluate_likelihood`, generation in :mod:`svf.eval.evaluate_generation`, the A/B
questions in :mod:`svf.eval.evaluate_mwe`, the methods in :mod:`svf.eval.methods`, the plots in
:mod:`svf.eval.report_plots`. Every choice (the single layer of one-layer methods, the likelihood
total strength) is made on validation prompts; test prompts are read once, for the report.
Generation compares methods at fixed, matched total displacements, chosen before any run.
Strengths here are *total* strengths (:mod:`svf.eval.methods`): a total displacement split over
a method's layers, unlike the per-layer ``strength`` of :func:`svf.steer`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from svf_kernels import SVFArgumentError

from ..arguments import (
    check_int,
    check_number,
    check_optional_bool,
    check_optional_int,
    check_path,
    check_text,
    check_tokenizer,
    show,
)
from ..concepts import CONCEPTS, Concept, load_concept
from ..hf import check_layers, check_model, num_layers
from ..layer_windows import resolve_layers as resolve_model_layers
from ..steering_field import SteeringField, check_target
from ..training import TrainConfig, pair_features, train_field
from . import report_plots
from .evaluate_fluency import FluencySettings, equal_fluency, fluency_methods, verdicts
from .evaluate_generation import Judge, long_form, multi_attribute, open_ended
from .evaluate_likelihood import LikelihoodResult, evaluate_all, gaps
from .judges import load_embedding_judge, train_pair_judge, vader_compound
from .knn_field import KNNField
from .methods import Method, build_methods, total_strength_unit
from .stages import STAGES


@dataclass
class EvalConfig:
    """What to run. ``quick`` shrinks data and sweeps so the whole run takes minutes.

    ``train_layers`` None: the window :func:`svf.layer_windows.default_layers` derives from the
    model's depth (12..21 of the default model's 30 layers); ``steer_layers`` None: the
    :func:`~svf.layer_windows.default_steer_layers` of the training window (16, 18, 20 of
    12..21). :func:`run_eval` fills both in from the model and the report records them.
    ``chat`` None: the chat template when the tokenizer has one, else plain text.
    ``stages``: which of :data:`STAGES` run (each concept's fields are trained whenever one of
    its stages runs).
    """

    concepts: tuple[str, ...] = CONCEPTS
    stages: tuple[str, ...] = STAGES
    train_layers: tuple[int, ...] | None = None
    steer_layers: tuple[int, ...] | None = None
    # likelihood: validation sweep of total strengths, toward the concept (+1) and/or away (-1)
    sweep: tuple[float, ...] = (0.1, 0.2, 0.4)
    directions: tuple[int, ...] = (1,)
    n_pairs: int | None = None
    n_completions: int = 4
    n_prompts: int | None = 60  # cap on prompts (validation and test keep their 30/70 split)
    knn_k: int = 64
    chat: bool | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    # open-ended generation: fixed total strengths, the same for every method, both directions
    gen_total_strengths: tuple[float, ...] = (0.3,)
    gen_prompts: int = 24
    gen_samples: int = 2
    gen_tokens: int = 32
    # long-form (first concept only): refresh intervals, prompts, length, window
    long_refresh: tuple[int, ...] = (1, 2, 4)
    long_prompts: int = 12
    long_tokens: int = 256
    long_window: int = 32
    # multi-attribute: softmin vs summed CAA over the first 2 and 3 concepts
    multi_samples: int = 2
    # equal fluency (svf.eval.evaluate_fluency): validation sweep of total strengths, the
    # perplexity budgets (x unsteered), the closed-loop target, prompts, samples, tokens
    fluency_strengths: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6)
    fluency_budgets: tuple[float, ...] = (1.25, 1.5)
    fluency_target: float = 0.9
    fluency_val_prompts: int = 12
    fluency_test_prompts: int = 24
    fluency_samples: int = 1
    fluency_tokens: int = 32
    # MWE A/B questions (the paper's protocol; uninformative at this model size)
    mwe_behaviors: tuple[str, ...] = ("wealth-seeking-inclination",)
    mwe_items: int | None = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SVFArgumentError` naming the first bad field (also after edits).

        Sequences are stored as tuples. Concept and MWE behaviour names are checked for type
        here; :func:`run_eval` loads their data before it runs or writes anything.
        """
        self.concepts = _names(self.concepts, "concepts", allow_empty=False)
        self.stages = _names(self.stages, "stages", allow_empty=False)
        unknown = [x for x in self.stages if x not in STAGES]
        if unknown:
            raise SVFArgumentError(f"EvalConfig.stages has unknown stages {unknown}; known: {list(STAGES)}")
        self.fluency_strengths = _numbers(self.fluency_strengths, "fluency_strengths")
        self.fluency_budgets = _numbers(self.fluency_budgets, "fluency_budgets")
        if any(b < 1 for b in self.fluency_budgets):
            raise SVFArgumentError(f"EvalConfig.fluency_budgets must be >= 1 (a perplexity at most that many "
                                   f"times the unsteered one), got {list(self.fluency_budgets)}")
        if self.fluency_target is None:
            raise SVFArgumentError("EvalConfig.fluency_target must be a probability in (0.5, 1) (the closed-loop "
                                   "target of the equal-fluency comparison), got None")
        check_target(self.fluency_target, "EvalConfig.fluency_target")
        self.mwe_behaviors = _names(self.mwe_behaviors, "mwe_behaviors", allow_empty=True)
        if self.train_layers is not None:
            self.train_layers = _ints(self.train_layers, "train_layers", minimum=0)
        if self.steer_layers is not None:
            self.steer_layers = _ints(self.steer_layers, "steer_layers", minimum=0)
        missing = ([] if self.train_layers is None or self.steer_layers is None
                   else [i for i in self.steer_layers if i not in self.train_layers])
        if missing:
            raise SVFArgumentError(f"EvalConfig.steer_layers {list(missing)} are not among the train_layers "
                                   f"{list(self.train_layers)}: every steering layer must be trained")
        self.sweep = _numbers(self.sweep, "sweep")
        self.gen_total_strengths = _numbers(self.gen_total_strengths, "gen_total_strengths")
        self.long_refresh = _ints(self.long_refresh, "long_refresh", minimum=1)
        d = self.directions
        if (isinstance(d, (str, bytes)) or not isinstance(d, Sequence) or not d
                or any(isinstance(x, bool) or not isinstance(x, int) or x not in (1, -1) for x in d)
                or len(set(d)) != len(d)):
            raise SVFArgumentError(f"EvalConfig.directions must be a non-empty tuple of distinct +1 / -1, "
                                   f"got {show(d)}")
        self.directions = tuple(d)
        for name in ("n_pairs", "mwe_items"):
            check_optional_int(getattr(self, name), f"EvalConfig.{name}", minimum=1)
        check_optional_int(self.n_prompts, "EvalConfig.n_prompts", minimum=2)  # >= 1 validation + 1 test
        for name in ("n_completions", "knn_k", "gen_prompts", "gen_samples", "gen_tokens", "long_prompts",
                     "long_tokens", "long_window", "multi_samples", "fluency_val_prompts",
                     "fluency_test_prompts", "fluency_samples", "fluency_tokens"):
            check_int(getattr(self, name), f"EvalConfig.{name}", minimum=1)
        check_int(self.seed, "EvalConfig.seed")
        check_optional_bool(self.chat, "EvalConfig.chat")
        if not isinstance(self.train, TrainConfig):
            raise SVFArgumentError(f"EvalConfig.train must be a svf.TrainConfig, got {show(self.train)}")
        self.train.validate()


def fluency_settings(cfg: EvalConfig) -> FluencySettings:
    """The equal-fluency comparison's settings of ``cfg``."""
    return FluencySettings(total_strengths=cfg.fluency_strengths, budgets=cfg.fluency_budgets,
                           target=cfg.fluency_target, val_prompts=cfg.fluency_val_prompts,
                           test_prompts=cfg.fluency_test_prompts, samples=cfg.fluency_samples,
                           max_new_tokens=cfg.fluency_tokens)


def _sequence(value: object, name: str, allow_empty: bool) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise SVFArgumentError(f"EvalConfig.{name} must be a tuple, got {show(value)}")
    if not value and not allow_empty:
        raise SVFArgumentError(f"EvalConfig.{name} must not be empty")
    return value


def _names(value: object, name: str, allow_empty: bool) -> tuple[str, ...]:
    seq = _sequence(value, name, allow_empty)
    for i, x in enumerate(seq):
        check_text(x, f"EvalConfig.{name}[{i}]")
    if len(set(seq)) != len(seq):
        raise SVFArgumentError(f"EvalConfig.{name} has duplicates: {show(value)}")
    return tuple(seq)


def _ints(value: object, name: str, minimum: int) -> tuple[int, ...]:
    seq = _sequence(value, name, allow_empty=False)
    for i, x in enumerate(seq):
        check_int(x, f"EvalConfig.{name}[{i}]", minimum=minimum)
    if len(set(seq)) != len(seq):
        raise SVFArgumentError(f"EvalConfig.{name} has duplicates: {show(value)}")
    return tuple(seq)


def _numbers(value: object, name: str) -> tuple[float, ...]:
    seq = _sequence(value, name, allow_empty=False)
    for i, x in enumerate(seq):
        check_number(x, f"EvalConfig.{name}[{i}]", positive=True)
    return tuple(seq)


def resolve_layers(cfg: EvalConfig, depth: int) -> EvalConfig:
    """A copy of ``cfg`` with its None layers filled in for a model of ``depth`` decoder layers
    (:func:`svf.layer_windows.resolve_layers`: :func:`~svf.layer_windows.default_layers`,
    :func:`~svf.layer_windows.default_steer_layers` of the training window); layers given are
    kept, and checked against the model's depth."""
    train, steer = resolve_model_layers(depth, cfg.train_layers, cfg.steer_layers,
                                        train_name="cfg.train_layers", steer_name="cfg.steer_layers")
    return dataclasses.replace(cfg, train_layers=train, steer_layers=steer)


def _layer_text(layers: Sequence[int]) -> str:
    """``12-21`` for a run of consecutive layers, else ``16, 18, 20``."""
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


def layers_fact(cfg: EvalConfig, given: EvalConfig, depth: int) -> str:
    """The report's line on the layers of ``cfg`` (resolved from ``given`` by
    :func:`resolve_layers` for a model of ``depth`` layers): which, and where they came from."""
    origin = [f"{what} {'given' if getattr(given, key) is not None else 'derived'}"
              for what, key in (("training", "train_layers"), ("steering", "steer_layers"))]
    return (f"layers: train {_layer_text(cfg.train_layers)}, steer {_layer_text(cfg.steer_layers)} "
            f"({', '.join(origin)}; the model has {depth} decoder layers)")


def quick_config(**overrides) -> EvalConfig:
    """A few minutes on the default model: two concepts, small data, sweeps and samples. The
    layers stay None (derived from the model at :func:`run_eval`) unless overridden."""
    valid = [f.name for f in fields(EvalConfig)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        raise SVFArgumentError(f"quick_config got unknown field{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(unknown)}; valid fields: {', '.join(valid)}")
    base = {"concepts": ("sentiment", "formality"), "n_pairs": 60, "n_completions": 2, "n_prompts": 10,
            "sweep": (0.2,), "train": TrainConfig(max_epochs=8, patience=2), "gen_prompts": 6,
            "gen_samples": 1, "gen_tokens": 16, "long_refresh": (1, 4), "long_prompts": 2, "long_tokens": 64,
            "multi_samples": 1, "mwe_items": 60, "fluency_strengths": (0.2, 0.8),
            "fluency_val_prompts": 3, "fluency_test_prompts": 3, "fluency_tokens": 12}
    base.update(overrides)
    return EvalConfig(**base)


def _cap(concept: Concept, n_prompts: int | None) -> Concept:
    if n_prompts is None or n_prompts >= len(concept.prompts):
        return concept
    n_val = max(1, round(0.3 * n_prompts))
    prompts = concept.validation_prompts[:n_val] + concept.test_prompts[: n_prompts - n_val]
    return Concept(concept.name, concept.pairs, tuple(prompts), concept.positive, concept.negative)


def choose_layer(model, tokenizer, concept: Concept, per_layer: dict[int, Method], unit: float,
                 total_strength: float, chat: bool) -> int:
    """The layer whose one-layer method moves the validation gap most (toward the concept) at
    ``total_strength``."""
    val = concept.validation_prompts
    base = gaps(model, tokenizer, concept, val, Method("base", {}), [0.0], unit, chat=chat)[0]
    shift = {i: float((gaps(model, tokenizer, concept, val, m, [total_strength], unit, chat=chat)[0]
                       - base).mean())
             for i, m in per_layer.items()}
    return max(shift, key=shift.get)


@dataclass
class Prepared:
    """One concept's trained fields and methods, and the choices made on validation."""

    methods: dict[str, Method]
    unit: float
    shared: SteeringField
    info: dict


def prepare(model, tokenizer, concept: Concept, cfg: EvalConfig, model_name: str = "") -> Prepared:
    """Train the shared field and the per-layer independent scorers, build the KNN banks and
    every method; the single layer of one-layer methods is chosen on validation prompts."""
    feats = pair_features(model, tokenizer, concept.pairs, cfg.train_layers, cfg.train, progress=False)
    shared, report = train_field(model, tokenizer, concept.pairs, concept=concept.name,
                                 train_layers=cfg.train_layers, steer_layers=cfg.steer_layers,
                                 config=cfg.train, model_name=model_name, progress=False, features=feats)
    independent: dict[int, SteeringField] = {}
    for i in cfg.steer_layers:
        independent[i], _ = train_field(model, tokenizer, concept.pairs, concept=concept.name,
                                        train_layers=[i], steer_layers=[i], config=cfg.train,
                                        model_name=model_name, progress=False, features=feats)
    # KNN banks: every pair's positive text, the same activations (last token, layer output)
    device = next(model.parameters()).device
    positives = torch.cat([f.pos for f in (feats.train, feats.val, feats.test)])
    knn = {i: KNNField(positives[:, cfg.train_layers.index(i)], k=cfg.knn_k).to(device) for i in cfg.steer_layers}
    unit = total_strength_unit(shared, cfg.steer_layers)
    mid = cfg.sweep[len(cfg.sweep) // 2]
    layer_caa = choose_layer(model, tokenizer, concept,
                             {i: Method("caa-1", {i: shared.row_field(i, "caa")}) for i in cfg.steer_layers},
                             unit, mid, cfg.chat)
    layer_svf = choose_layer(model, tokenizer, concept,
                             {i: Method("svf-1", {i: shared.row_field(i, "svf")}) for i in cfg.steer_layers},
                             unit, mid, cfg.chat)
    methods = build_methods(shared, cfg.steer_layers, layer_svf, independent=independent, knn=knn)
    methods["caa-1"] = Method("caa-1", {layer_caa: shared.row_field(layer_caa, "caa")})
    info = {"train_report": report.as_dict(), "caa_1_layer": layer_caa, "svf_1_layer": layer_svf, "unit": unit}
    return Prepared(methods, unit, shared, info)


def concept_judges(concept: Concept) -> tuple[dict[str, Judge], dict]:
    """Judges independent of the steered model, and their held-out accuracies: sentiment gets
    VADER and the rt-polarity embedding classifier, other concepts an embedding classifier fitted
    on their contrastive pairs."""
    if concept.name == "sentiment":
        judge = load_embedding_judge()
        return {"embed": judge.score, "vader": vader_compound}, {"embed_heldout_accuracy": judge.heldout_accuracy,
                                                                 "embed_n_heldout": judge.n_heldout}
    judge = train_pair_judge(concept.pairs)
    return {"embed": judge.score}, {"embed_heldout_accuracy": judge.heldout_accuracy,
                                    "embed_n_heldout": judge.n_heldout}


def _likelihood_rows(name: str, results: Sequence[LikelihoodResult], methods: dict[str, Method]):
    rows, sweeps, slopes = [], [], []
    for r in results:
        rows.append({"concept": name, **r.row(), "layers": "+".join(map(str, methods[r.method].layers))})
        sweeps += [{"concept": name, "method": r.method, "total_strength": s,
                    "gap_shift": r.direction * v}
                   for s, v in zip(r.sweep, r.val_shift)]
        slopes += [{"concept": name, "method": r.method, "direction": r.direction, "prompt": i, "slope": float(v)}
                   for i, v in enumerate(r.stats["slope"])]
    return rows, sweeps, slopes


def run_stages(cfg: EvalConfig) -> list[str]:
    """The stages of a run of ``cfg`` in order, named as :func:`run_eval` times them."""
    want = set(cfg.stages)
    stages = ["mwe"] if cfg.mwe_behaviors and "mwe" in want else []
    for i, name in enumerate(cfg.concepts):
        stages += [f"{name}: train + choose layers"] if want - {"mwe"} else []
        stages += [f"{name}: {s}" for s in ("likelihood", "open-ended") if s in want]
        stages += [f"{name}: long-form"] if i == 0 and "long-form" in want else []
        stages += [f"{name}: equal-fluency"] if "equal-fluency" in want else []
    return stages + (["multi-attribute"] if len(cfg.concepts) >= 2 and "multi-attribute" in want else [])


@dataclass
class RunStatus:
    """How far a run got, for the report's first lines: the report is rewritten after every
    stage and on the way out of an interrupted or failed run, so without this a partial report
    would read as a complete one."""

    stages: list[str]  # every stage of the run, in order (:func:`run_stages`)
    done: list[str] = field(default_factory=list)
    finished: bool = False  # every stage ran and returned
    reason: str = ""  # why the run stopped before the end (empty while it runs or once finished)

    def stop(self, exc: BaseException) -> None:
        """Record that ``exc`` ended the run before the end, in one line."""
        if isinstance(exc, KeyboardInterrupt):
            self.reason = "interrupted (KeyboardInterrupt)"
            return
        lines = str(exc).strip().splitlines()
        self.reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

    def headline(self) -> list[str]:
        """The report's title and first paragraph: complete, stopped (where, why, what has no
        results) or still running."""
        if self.finished:
            n = len(self.stages)
            return ["# svf eval report: complete", "", f"Every stage finished ({n} of {n})."]
        missing = [s for s in self.stages if s not in self.done]
        listed = ", ".join(f"`{s}`" for s in missing) or "none"
        stage = f"stage `{missing[0]}`" if missing else "its last stage"
        if self.reason:
            said = (f"**The run stopped during {stage}: {self.reason}.** Only the stages that "
                    f"finished have results below. Stages with no results: {listed}.")
            return ["# svf eval report: stopped before the end", "", said]
        said = (f"**Written after {len(self.done)} of {len(self.stages)} stages, before {stage}.** "
                "If no run is writing here any more, it ended without a word (killed). "
                f"Stages with no results yet: {listed}.")
        return ["# svf eval report: incomplete, written while the run was going", "", said]


def run_eval(model, tokenizer, cfg: EvalConfig, out: Path, model_name: str = "",
             command: str = "") -> dict[str, list[dict]]:
    """Every concept, method and measure; writes the report directory ``out`` (Markdown
    tables, CSV, plots, ``README.md`` with the run's facts) and returns the tables' rows.
    The report is rewritten after every stage and when a stage raises (``KeyboardInterrupt``
    included, which is raised again); its first lines say whether the run is complete
    (:class:`RunStatus`).

    Every argument (and every concept's data) is checked before anything runs or is written:
    a bad one raises :class:`SVFArgumentError` naming it."""
    check_model(model)
    check_tokenizer(tokenizer)
    if not isinstance(cfg, EvalConfig):
        raise SVFArgumentError(f"cfg must be an svf.eval.evaluation.EvalConfig, got {show(cfg)}")
    cfg.validate()
    depth = num_layers(model)
    given, cfg = cfg, resolve_layers(cfg, depth)
    check_layers(model, cfg.train_layers, "cfg.train_layers")
    layers_line = layers_fact(cfg, given, depth)
    out = check_path(out, "out")
    if out.exists() and not out.is_dir():
        raise SVFArgumentError(f"out {str(out)!r} exists and is not a directory")
    check_text(model_name, "model_name", allow_empty=True)
    check_text(command, "command", allow_empty=True)
    concepts: list[Concept] = []
    for name in cfg.concepts:
        try:
            concepts.append(_cap(load_concept(name, cfg.n_pairs, cfg.n_completions), cfg.n_prompts))
        except SVFArgumentError as exc:
            raise SVFArgumentError(f"cfg.concepts: concept {name!r} cannot be loaded: {exc}") from None
    if cfg.mwe_behaviors:
        from . import evaluate_mwe

        for behavior in cfg.mwe_behaviors:
            try:
                evaluate_mwe.load_mwe(behavior)
            except SVFArgumentError as exc:
                raise SVFArgumentError(f"cfg.mwe_behaviors: {behavior!r} cannot be loaded: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables: dict[str, list[dict]] = {k: [] for k in ("likelihood", "sweeps", "slopes", "open_ended",
                                                    "long_form", "multi_attribute", "mwe", "judges",
                                                    "fluency_sweep", "equal_fluency", "fluency_verdicts")}
    timings: dict[str, float] = {}
    examples: list[dict] = []
    status = RunStatus(run_stages(cfg))

    def flush() -> None:  # the report so far: a late failure loses nothing already measured
        timings["total"] = time.perf_counter() - t0
        status.done = [k for k in timings if k != "total"]
        write_report(out, tables, examples, cfg, timings, model_name, command, status, layers=layers_line)

    try:
        _run_stages(model, tokenizer, cfg, concepts, out, model_name, tables, timings, examples,
                    flush)
    except BaseException as exc:  # Ctrl-C too: the report says where and why it stopped
        status.stop(exc)
        flush()
        raise
    status.finished = True
    flush()
    return tables


def _run_stages(model, tokenizer, cfg: EvalConfig, concepts: list[Concept], out: Path,
                model_name: str, tables: dict[str, list[dict]], timings: dict[str, float],
                examples: list[dict], flush: Callable[[], None]) -> None:
    """The stages of :func:`run_eval`, in the order of :func:`run_stages`: each fills
    ``tables`` and, once it returns, its entry of ``timings``; ``flush`` rewrites the report."""
    shared: dict[str, SteeringField] = {}
    judges: dict[str, Judge] = {}
    units: list[float] = []
    first_prompts: list[str] = []

    want = set(cfg.stages)
    if cfg.mwe_behaviors and "mwe" in want:
        from .evaluate_mwe import run_mwe

        t = time.perf_counter()
        tables["mwe"] = run_mwe(model, tokenizer, cfg.mwe_behaviors, train_layers=cfg.train_layers,
                                steer_layers=cfg.steer_layers, sweep=cfg.sweep, n_items=cfg.mwe_items, train_config=cfg.train,
                                seed=cfg.seed, model_name=model_name)
        timings["mwe"] = time.perf_counter() - t
        flush()
    if not want - {"mwe"}:
        return
    for name, concept in tqdm(list(zip(cfg.concepts, concepts)), desc="concepts"):
        t = time.perf_counter()
        prep = prepare(model, tokenizer, concept, cfg, model_name)
        (out / f"{name}_choices.json").write_text(json.dumps(prep.info, indent=1, default=float) + "\n")
        shared[name], units = prep.shared, units + [prep.unit]
        timings[f"{name}: train + choose layers"] = time.perf_counter() - t
        if "likelihood" in want:
            t = time.perf_counter()
            results = evaluate_all(model, tokenizer, concept, prep.methods, prep.unit, cfg.sweep, chat=cfg.chat,
                                   directions=cfg.directions)
            for key, rows in zip(("likelihood", "sweeps", "slopes"), _likelihood_rows(name, results, prep.methods)):
                tables[key] += rows
            timings[f"{name}: likelihood"] = time.perf_counter() - t
        if want & {"open-ended", "long-form", "multi-attribute", "equal-fluency"}:  # they judge text
            cj, acc = concept_judges(concept)
            judges[name] = cj["embed"]
            tables["judges"].append({"concept": name, **acc})
        if "open-ended" in want:
            t = time.perf_counter()
            tables["open_ended"] += open_ended(model, tokenizer, concept, prep.methods, prep.unit,
                                               cfg.gen_total_strengths,
                                               cj, n_prompts=cfg.gen_prompts, samples=cfg.gen_samples, max_new_tokens=cfg.gen_tokens,
                                               chat=cfg.chat, seed=cfg.seed, examples=examples)
            timings[f"{name}: open-ended"] = time.perf_counter() - t
        if not first_prompts and "long-form" in want:
            t = time.perf_counter()
            tables["long_form"] += long_form(model, tokenizer, concept, prep.methods, prep.unit,
                                             max(cfg.gen_total_strengths), cj["embed"],
                                             refreshes=cfg.long_refresh,
                                             n_prompts=cfg.long_prompts, length=cfg.long_tokens,
                                             window=cfg.long_window, chat=cfg.chat, seed=cfg.seed)
            timings[f"{name}: long-form"] = time.perf_counter() - t
        first_prompts = first_prompts or concept.test_prompts
        if "equal-fluency" in want:
            t = time.perf_counter()
            knn = prep.methods["knn"].fields if "knn" in prep.methods else None
            methods = fluency_methods(prep.shared, cfg.steer_layers, cfg.fluency_target, knn=knn)
            sweep, chosen = equal_fluency(model, tokenizer, concept, methods, prep.unit, cj["embed"],
                                          fluency_settings(cfg), chat=cfg.chat, seed=cfg.seed)
            tables["fluency_sweep"] += sweep
            tables["equal_fluency"] += chosen
            tables["fluency_verdicts"] = verdicts(tables["equal_fluency"])
            timings[f"{name}: equal-fluency"] = time.perf_counter() - t
        flush()
    if len(cfg.concepts) >= 2 and "multi-attribute" in want:
        t = time.perf_counter()
        combos = [cfg.concepts[:n] for n in (2, 3) if len(cfg.concepts) >= n]
        tables["multi_attribute"] = multi_attribute(
            model, tokenizer, shared, cfg.steer_layers, sum(units) / len(units),
            max(cfg.gen_total_strengths),
            judges, first_prompts[: cfg.gen_prompts], combos=combos, samples=cfg.multi_samples, max_new_tokens=cfg.gen_tokens,
            chat=cfg.chat, seed=cfg.seed)
        timings["multi-attribute"] = time.perf_counter() - t


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def write_report(out: Path, tables: dict[str, list[dict]], examples: list[dict], cfg: EvalConfig,
                 timings: dict[str, float], model_name: str, command: str,
                 status: RunStatus | None = None, layers: str = "") -> None:
    """CSV and Markdown per table, the plots, example continuations and ``README.md``, which
    opens with ``status`` (complete, stopped or still running) when given; ``layers``: the line
    on the layers used (:func:`layers_fact`; default: the layers of ``cfg``)."""
    for key, rows in tables.items():
        _write_csv(rows, out / f"{key}.csv")
    for fname, (table, draw) in report_plots.PLOTS.items():
        if tables.get(table):
            draw(tables[table], out / fname)
    (out / "examples.json").write_text(json.dumps(examples, indent=1) + "\n")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str) + "\n")
    facts = [f"- command: `{command or ' '.join(sys.argv)}`", f"- model: {model_name or 'unknown'}",
             f"- {layers or f'layers: train {cfg.train_layers}, steer {cfg.steer_layers}'}",
             f"- commit: {_git_commit()}", f"- machine: {_machine()}",
             f"- wall time: {timings.get('total', 0.0) / 60:.1f} min"]
    head = status.headline() if status is not None else ["# svf eval report"]
    parts = [*head, "", *facts, "", "## Time per stage (s)", "",
             *[f"- {k}: {v:.0f}" for k, v in timings.items()], ""]
    sections = [("likelihood",
                 "Likelihood steerability (test prompts; total strength chosen on validation)",
                 ["concept", "method", "direction", "layers", "total_strength", "mean_shift",
                  "steerable_rate", "anti_steerable", "mean_slope", "n_test"]),
                ("open_ended", "Open-ended generation (test prompts, matched total displacement)", None),
                ("long_form", "Long-form, per window", None),
                ("multi_attribute", "Multi-attribute (softmin SVF vs summed CAA)", None),
                ("fluency_verdicts", ("Equal fluency: best SVF variant vs best CAA (chosen on validation, "
                 "test judge shift)"), None),
                ("equal_fluency", ("Equal fluency: every method at the strength kept on validation within "
                 "each perplexity budget (test prompts)"), None),
                ("mwe", "MWE A/B questions (40/10/50 split)", None),
                ("judges", "Judges' held-out accuracy", None)]
    for key, title, keys in sections:
        if tables.get(key):
            parts += [f"## {title}", "", _markdown(tables[key], keys), ""]
            (out / f"{key}.md").write_text(_markdown(tables[key], keys) + "\n")
    parts += ["## Plots", ""] + [f"![{f}]({f})" for f in report_plots.PLOTS if (out / f).is_file()]
    (out / "README.md").write_text("\n".join(parts) + "\n")


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _markdown(rows: Sequence[dict], keys: Sequence[str] | None = None) -> str:
    keys = list(keys or dict.fromkeys(k for r in rows for k in r))

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
