"""One concept's fields and methods for ``svf eval``: trained once per concept, before its stages.

:func:`prepare` trains the shared field and the per-layer independent scorers, builds the KNN
banks and every method (:mod:`svf.eval.methods`), and chooses the single layer of the one-layer
methods on validation prompts (:func:`choose_layer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..concepts import Concept
from ..field_packing import row_field
from ..steering_field import SteeringField, strength_scale
from ..training import pair_features, train_field
from .evaluate_likelihood import gaps
from .field_cache import cached_field, field_key
from .knn_field import KNNField
from .methods import Method, build_methods

if TYPE_CHECKING:
    from .config import EvalConfig


def choose_layer(model, tokenizer, concept: Concept, per_layer: dict[int, Method], scale: float,
                 total_strength: float, chat: bool) -> int:
    """The layer whose one-layer method moves the validation gap most (toward the concept) at
    ``total_strength``."""
    val = concept.validation_prompts
    base = gaps(model, tokenizer, concept, val, Method("base", {}), [0.0], scale, chat=chat)[0]
    shift = {i: float((gaps(model, tokenizer, concept, val, m, [total_strength], scale, chat=chat)[0]
                       - base).mean())
             for i, m in per_layer.items()}
    return max(shift, key=shift.get)


@dataclass
class Prepared:
    """One concept's trained fields and methods, and the choices made on validation.

    ``scale``: what a total strength multiplies (:func:`svf.steering_field.strength_scale` of
    the shared field over the steering layers); ``info``: the choices, written to
    ``<concept>_choices.json`` (``scale`` under the key ``unit``); ``inner``: the shared field
    trained on inner positions too, when the equal-fluency comparison runs ``svf-inner``."""

    methods: dict[str, Method]
    scale: float
    shared: SteeringField
    info: dict
    inner: SteeringField | None = None


#: The stages that read a concept's :attr:`Prepared.methods` (the others read its fields).
METHOD_STAGES = ("likelihood", "open-ended", "long-form")


def prepare(model, tokenizer, concept: Concept, cfg: EvalConfig, model_name: str = "",
            field_cache: Path | None = None) -> Prepared:
    """Train the shared field (and, for ``svf-inner``, the field trained on inner positions),
    or load them from ``field_cache`` (:mod:`svf.eval.field_cache`); when a stage of
    :data:`METHOD_STAGES` runs, also the per-layer independent scorers, the KNN banks and every
    method, the single layer of one-layer methods chosen on validation prompts."""
    feats = None

    def features():
        nonlocal feats
        if feats is None:
            feats = pair_features(model, tokenizer, concept.pairs, cfg.train_layers, cfg.train,
                                  progress=False)
        return feats

    def train(config, shared_features: bool) -> tuple[SteeringField, dict]:
        """A field trained with ``config`` (on the last-token features the other scorers share
        when ``shared_features``), or its cached copy."""
        def run() -> tuple[SteeringField, dict]:
            field, report = train_field(model, tokenizer, concept.pairs, concept=concept.name,
                                        train_layers=cfg.train_layers, steer_layers=cfg.steer_layers,
                                        config=config, model_name=model_name, progress=False,
                                        features=features() if shared_features else None)
            return field, report.as_dict()

        key = None if field_cache is None else \
            field_key(model, tokenizer, concept, cfg, model_name, config.positions, config)
        return cached_field(field_cache, key, run)

    shared, report = train(cfg.train, shared_features=True)
    scale = strength_scale([shared], cfg.steer_layers)
    info = {"train_report": report, "unit": scale}
    if shared.natural is not None:  # the natural direction's damping and its criterion table
        info["natural"] = shared.natural
    inner = None
    if "equal-fluency" in cfg.stages and "svf-inner" in cfg.fluency_methods:
        inner, info["inner_train_report"] = train(dataclasses.replace(cfg.train, positions="inner"),
                                                  shared_features=False)
    if not any(stage in cfg.stages for stage in METHOD_STAGES):
        return Prepared({}, scale, shared, info, inner)
    feats = features()
    independent: dict[int, SteeringField] = {}
    for i in cfg.steer_layers:
        independent[i], _ = train_field(model, tokenizer, concept.pairs, concept=concept.name,
                                        train_layers=[i], steer_layers=[i], config=cfg.train,
                                        model_name=model_name, progress=False, features=feats)
    # KNN banks: every pair's positive text, the same activations (last token, layer output)
    device = next(model.parameters()).device
    positives = torch.cat([f.pos for f in (feats.train, feats.val, feats.test)])
    knn = {i: KNNField(positives[:, cfg.train_layers.index(i)], k=cfg.knn_k).to(device) for i in cfg.steer_layers}
    mid = cfg.sweep[len(cfg.sweep) // 2]
    layer_caa = choose_layer(model, tokenizer, concept,
                             {i: Method("caa-1", {i: row_field([shared], i, "caa")}) for i in cfg.steer_layers},
                             scale, mid, cfg.chat)
    layer_svf = choose_layer(model, tokenizer, concept,
                             {i: Method("svf-1", {i: row_field([shared], i, "svf")}) for i in cfg.steer_layers},
                             scale, mid, cfg.chat)
    methods = build_methods(shared, cfg.steer_layers, layer_svf, independent=independent, knn=knn)
    methods["caa-1"] = Method("caa-1", {layer_caa: row_field([shared], layer_caa, "caa")})
    info.update({"caa_1_layer": layer_caa, "svf_1_layer": layer_svf})
    return Prepared(methods, scale, shared, info, inner)
