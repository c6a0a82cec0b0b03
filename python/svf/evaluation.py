"""``svf eval``: train each concept's fields, build every method, measure, write a report.

This module orchestrates; the measures live in :mod:`svf.metrics`, the likelihood protocol in
:mod:`svf.evaluate_likelihood`, the methods in :mod:`svf.methods`. Every choice (the single
layer of one-layer methods, the strength) is made on validation prompts; test prompts are read
once, for the report.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .concepts import CONCEPTS, Concept, load_concept
from .evaluate_likelihood import LikelihoodResult, evaluate_all, gaps
from .field import SteeringField
from .methods import Method, build_methods, strength_unit
from .training import TrainConfig, train_field


@dataclass
class EvalConfig:
    """What to run. ``quick`` shrinks data and sweeps so the whole run takes minutes."""

    concepts: tuple[str, ...] = CONCEPTS
    train_layers: tuple[int, ...] = tuple(range(12, 22))
    steer_layers: tuple[int, ...] = (16, 18, 20)
    sweep: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    n_pairs: int | None = None
    n_completions: int = 8
    n_prompts: int | None = None  # cap on prompts (validation and test keep their 30/70 split)
    knn_k: int = 64
    chat: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)


def quick_config(**overrides) -> EvalConfig:
    """A few minutes on the default model: fewer pairs, prompts, completions and strengths."""
    base = {"n_pairs": 60, "n_completions": 3, "n_prompts": 20, "sweep": (0.1, 0.3),
            "train": TrainConfig(max_epochs=8, patience=2)}
    base.update(overrides)
    return EvalConfig(**base)


def _cap(concept: Concept, n_prompts: int | None) -> Concept:
    if n_prompts is None or n_prompts >= len(concept.prompts):
        return concept
    n_val = max(1, round(0.3 * n_prompts))
    prompts = concept.validation_prompts[:n_val] + concept.test_prompts[: n_prompts - n_val]
    return Concept(concept.name, concept.pairs, tuple(prompts), concept.positive, concept.negative)


def choose_layer(model, tokenizer, concept: Concept, per_layer: dict[int, Method], unit: float,
                 strength: float, chat: bool) -> int:
    """The layer whose one-layer method moves the validation gap most (toward the concept)."""
    val = concept.validation_prompts
    base = gaps(model, tokenizer, concept, val, Method("base", {}), [0.0], unit, chat=chat)[0]
    shift = {i: float((gaps(model, tokenizer, concept, val, m, [strength], unit, chat=chat)[0] - base).mean())
             for i, m in per_layer.items()}
    return max(shift, key=shift.get)


def prepare(model, tokenizer, concept: Concept, cfg: EvalConfig, model_name: str = "") -> tuple[dict[str, Method], float, dict]:
    """Train the shared field and the per-layer independent scorers; build every method."""
    shared, report = train_field(model, tokenizer, concept.pairs, concept=concept.name,
                                 train_layers=cfg.train_layers, steer_layers=cfg.steer_layers,
                                 config=cfg.train, model_name=model_name, progress=False)
    independent: dict[int, SteeringField] = {}
    for i in cfg.steer_layers:
        independent[i], _ = train_field(model, tokenizer, concept.pairs, concept=concept.name,
                                        train_layers=[i], steer_layers=[i], config=cfg.train,
                                        model_name=model_name, progress=False)
    knn = None
    try:
        from .knn_field import knn_fields
    except ImportError:  # the KNN baseline is optional until it lands
        knn_fields = None
    if knn_fields is not None:
        knn = knn_fields(model, tokenizer, [p.positive for p in concept.pairs], cfg.steer_layers, k=cfg.knn_k)
    unit = strength_unit(shared, cfg.steer_layers)
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
    return methods, unit, info


def run_likelihood(model, tokenizer, cfg: EvalConfig, out: Path, model_name: str = "") -> list[dict]:
    """Every concept, every method, both directions; writes ``likelihood.csv`` / ``.md`` and,
    per concept, the choices made on validation (``<concept>_choices.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in cfg.concepts:
        t0 = time.perf_counter()
        concept = _cap(load_concept(name, cfg.n_pairs, cfg.n_completions), cfg.n_prompts)
        methods, unit, info = prepare(model, tokenizer, concept, cfg, model_name)
        results: list[LikelihoodResult] = evaluate_all(model, tokenizer, concept, methods, unit, cfg.sweep, chat=cfg.chat)
        for r in results:
            rows.append({"concept": name, **r.row(), "layers": "+".join(map(str, methods[r.method].layers)),
                         "seconds": round(time.perf_counter() - t0, 1)})
        (out / f"{name}_choices.json").write_text(json.dumps(info, indent=1, default=float) + "\n")
    _write(rows, out / "likelihood")
    (out / "config.txt").write_text(repr(asdict(cfg)) + "\n")
    return rows


def _write(rows: Sequence[dict], stem: Path) -> None:
    if not rows:
        return
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    keys = ["concept", "method", "direction", "layers", "strength", "mean_shift", "steerable_rate",
            "anti_steerable", "mean_slope", "n_test"]
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
