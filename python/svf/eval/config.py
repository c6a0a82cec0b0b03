"""What ``svf eval`` runs: :class:`EvalConfig`, its checks (:meth:`EvalConfig.validate`), the
shrunk :func:`quick_config` and :func:`with_model_layers`, which fills in the layers for a model.

Strengths here are *total* strengths (:mod:`svf.eval.methods`): a total displacement split over
a method's layers, unlike the per-layer ``strength`` of :func:`svf.steer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from svf_kernels import SVFArgumentError

from ..arguments import (
    check_int,
    check_number,
    check_optional_bool,
    check_optional_int,
    check_text,
    show,
)
from ..concepts import CONCEPTS
from ..layer_windows import resolve_layers
from ..steering_field import check_target
from ..training import TrainConfig
from .base_field import eval_train_config
from .evaluate_fluency import FLUENCY_METHODS, FluencySettings
from .stages import STAGE_NAMES


@dataclass
class EvalConfig:
    """What to run. ``quick`` shrinks data and sweeps so the whole run takes minutes.

    ``train_layers`` None: the window :func:`svf.layer_windows.default_layers` derives from the
    model's depth (12..21 of the default model's 30 layers); ``steer_layers`` None: the
    :func:`~svf.layer_windows.default_steer_layers` of the training window (16, 18, 20 of
    12..21). :func:`svf.eval.evaluation.run_eval` fills both in from the model
    (:func:`with_model_layers`) and the report records them.
    ``chat`` None: the chat template when the tokenizer has one, else plain text.
    ``stages``: which of the stages (:data:`svf.eval.stages.STAGES`, by name) run.
    ``signs``: the likelihood stage's requested movement, +1 toward the concept, -1 away.
    """

    concepts: tuple[str, ...] = CONCEPTS
    stages: tuple[str, ...] = STAGE_NAMES
    train_layers: tuple[int, ...] | None = None
    steer_layers: tuple[int, ...] | None = None
    # likelihood: validation sweep of total strengths, toward the concept (+1) and/or away (-1)
    sweep: tuple[float, ...] = (0.1, 0.2, 0.4)
    signs: tuple[int, ...] = (1,)
    n_pairs: int | None = None
    n_completions: int = 4
    # cap on prompts of the likelihood, generation and choice-of-layer stages (validation and
    # test keep their 30/70 split); the equal-fluency comparison takes fluency_*_prompts
    n_prompts: int | None = 60
    knn_k: int = 64
    chat: bool | None = None
    train: TrainConfig = field(default_factory=eval_train_config)
    # open-ended generation: fixed total strengths, the same for every method, both signs
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
    # equal fluency (svf.eval.evaluate_fluency): the methods, the validation sweep of total
    # strengths, the perplexity budgets (x unsteered), the largest fall of distinct-2 from the
    # unsteered continuations at any budget, the closed-loop target, prompts (from
    # the concept's own split, whatever n_prompts caps), samples per prompt, tokens
    fluency_methods: tuple[str, ...] = FluencySettings.methods
    fluency_strengths: tuple[float, ...] = FluencySettings.total_strengths
    fluency_budgets: tuple[float, ...] = FluencySettings.budgets
    fluency_distinct_drop: float = FluencySettings.distinct_drop
    fluency_target: float = FluencySettings.target
    fluency_val_prompts: int = FluencySettings.val_prompts
    fluency_test_prompts: int = FluencySettings.test_prompts
    fluency_val_samples: int = FluencySettings.val_samples
    fluency_samples: int = FluencySettings.samples
    fluency_tokens: int = FluencySettings.max_new_tokens
    # MWE A/B questions (the paper's protocol; uninformative at this model size)
    mwe_behaviors: tuple[str, ...] = ("wealth-seeking-inclination",)
    mwe_items: int | None = 100
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SVFArgumentError` naming the first bad field (also after edits).

        Sequences are stored as tuples. Concept and MWE behaviour names are checked for type
        here; :func:`svf.eval.evaluation.run_eval` loads their data before it runs or writes
        anything.
        """
        self.concepts = _names(self.concepts, "concepts", allow_empty=False)
        self.stages = _names(self.stages, "stages", allow_empty=False)
        unknown = [x for x in self.stages if x not in STAGE_NAMES]
        if unknown:
            raise SVFArgumentError(f"EvalConfig.stages has unknown stages {unknown}; known: {list(STAGE_NAMES)}")
        self.fluency_methods = _names(self.fluency_methods, "fluency_methods", allow_empty=False)
        unknown = [x for x in self.fluency_methods if x not in FLUENCY_METHODS]
        if unknown:
            raise SVFArgumentError(f"EvalConfig.fluency_methods has unknown methods {unknown}; known: "
                                   f"{list(FLUENCY_METHODS)}")
        self.fluency_strengths = _numbers(self.fluency_strengths, "fluency_strengths")
        self.fluency_budgets = _numbers(self.fluency_budgets, "fluency_budgets")
        if any(b < 1 for b in self.fluency_budgets):
            raise SVFArgumentError(f"EvalConfig.fluency_budgets must be >= 1 (a perplexity at most that many "
                                   f"times the unsteered one), got {list(self.fluency_budgets)}")
        if self.fluency_target is None:
            raise SVFArgumentError("EvalConfig.fluency_target must be a probability in (0.5, 1) (the closed-loop "
                                   "target of the equal-fluency comparison), got None")
        check_target(self.fluency_target, "EvalConfig.fluency_target")
        check_number(self.fluency_distinct_drop, "EvalConfig.fluency_distinct_drop", minimum=0.0, maximum=1.0)
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
        s = self.signs
        if (isinstance(s, (str, bytes)) or not isinstance(s, Sequence) or not s
                or any(isinstance(x, bool) or not isinstance(x, int) or x not in (1, -1) for x in s)
                or len(set(s)) != len(s)):
            raise SVFArgumentError(f"EvalConfig.signs must be a non-empty tuple of distinct +1 / -1, "
                                   f"got {show(s)}")
        self.signs = tuple(s)
        for name in ("n_pairs", "mwe_items"):
            check_optional_int(getattr(self, name), f"EvalConfig.{name}", minimum=1)
        check_optional_int(self.n_prompts, "EvalConfig.n_prompts", minimum=2)  # >= 1 validation + 1 test
        for name in ("n_completions", "knn_k", "gen_prompts", "gen_samples", "gen_tokens", "long_prompts",
                     "long_tokens", "long_window", "multi_samples", "fluency_val_prompts",
                     "fluency_val_samples", "fluency_samples", "fluency_tokens"):
            check_int(getattr(self, name), f"EvalConfig.{name}", minimum=1)
        check_int(self.fluency_test_prompts, "EvalConfig.fluency_test_prompts", minimum=2)  # a paired interval
        check_int(self.seed, "EvalConfig.seed")
        check_optional_bool(self.chat, "EvalConfig.chat")
        if not isinstance(self.train, TrainConfig):
            raise SVFArgumentError(f"EvalConfig.train must be a svf.TrainConfig, got {show(self.train)}")
        self.train.validate()
        natural = [x for x in self.fluency_methods if "natural" in x]
        if natural and self.train.fisher_samples == 0:
            raise SVFArgumentError(f"EvalConfig.fluency_methods {natural} need the natural direction: set "
                                   "train=TrainConfig(fisher_samples=...) (svf eval --fisher-samples N)")
        if "svf-inner" in self.fluency_methods and self.train.positions == "inner":
            raise SVFArgumentError("EvalConfig.fluency_methods has 'svf-inner', but EvalConfig.train already "
                                   "trains the base field at inner positions, so the two are one field: "
                                   "train it at the last token (svf.eval.base_field.eval_train_config) or "
                                   "leave 'svf-inner' out")


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


def with_model_layers(cfg: EvalConfig, depth: int) -> EvalConfig:
    """A copy of ``cfg`` with its None layers filled in for a model of ``depth`` decoder layers
    (:func:`svf.layer_windows.resolve_layers`: :func:`~svf.layer_windows.default_layers`,
    :func:`~svf.layer_windows.default_steer_layers` of the training window); layers given are
    kept, and checked against the model's depth."""
    train, steer = resolve_layers(depth, cfg.train_layers, cfg.steer_layers,
                                  train_name="cfg.train_layers", steer_name="cfg.steer_layers")
    return dataclasses.replace(cfg, train_layers=train, steer_layers=steer)


def quick_config(**overrides) -> EvalConfig:
    """A few minutes on the default model: two concepts, small data, sweeps and samples. The
    layers stay None (derived from the model at :func:`svf.eval.evaluation.run_eval`) unless
    overridden."""
    valid = [f.name for f in fields(EvalConfig)]
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        raise SVFArgumentError(f"quick_config got unknown field{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(unknown)}; valid fields: {', '.join(valid)}")
    base = {"concepts": ("sentiment", "formality"), "n_pairs": 60, "n_completions": 2, "n_prompts": 10,
            "sweep": (0.2,), "train": eval_train_config(max_epochs=8, patience=2), "gen_prompts": 6,
            "gen_samples": 1, "gen_tokens": 16, "long_refresh": (1, 4), "long_prompts": 2, "long_tokens": 64,
            "multi_samples": 1, "mwe_items": 60, "fluency_strengths": (0.2, 0.8),
            "fluency_val_prompts": 3, "fluency_test_prompts": 3, "fluency_samples": 1, "fluency_tokens": 12}
    base.update(overrides)
    return EvalConfig(**base)
