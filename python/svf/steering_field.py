"""``SteeringField``: a trained concept field (scorer + metadata) and its artifact I/O."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from svf_kernels import SVFArgumentError

from . import artifacts
from .scorer import DIRECTIONS, ConceptScorer, ScorerConfig

_SCORER_TENSORS = ("R", "layer_emb", "Wg", "Wb", "W1", "b1", "w2", "b2")

#: Per-layer relative strength used when none is given, in the robust unit (docs/STEERING.md;
#: on the default model the push of 0.15 mean norms); a saved artifact keeps the value stored
#: in it.
DEFAULT_STRENGTH = 0.25

#: What a relative strength multiplies (docs/STEERING.md): ``robust`` the norm without the
#: outlier dimensions (:func:`svf.calibration.robust_norm`), ``mean_norm`` the mean L2 norm.
#: ``unit=None`` means the field's own: ``robust`` when it stores robust norms, else
#: ``mean_norm`` (fields saved in format version 1).
STRENGTH_UNITS = ("robust", "mean_norm")


def target_score(target: float) -> float:
    """The score a closed-loop ``target`` probability stands for: ``logit(target)``, reached
    on the side a strength pushes toward (the scorer is trained with BCE, so ``sigmoid(score)``
    is its probability that the text is on the concept's positive side)."""
    return math.log(target / (1.0 - target))


def entry_concepts(entry: object, what: str = "fields") -> list[SteeringField]:
    """The concepts of an *entry* (what one request or one ``steer`` call steers with): one
    :class:`SteeringField`, or a non-empty sequence of them combined by soft minimum.
    ``what`` names the argument in the error."""
    if isinstance(entry, SteeringField):
        return [entry]
    items = list(entry) if isinstance(entry, Sequence) and not isinstance(entry, str) else []
    if not items or not all(isinstance(f, SteeringField) for f in items):
        raise SVFArgumentError(f"{what} must be a SteeringField or a non-empty sequence of them, "
                               f"got {entry!r:.200}")
    return items


def check_train_layers(fields: Sequence[SteeringField], layers: Sequence[int]) -> None:
    """Every steering layer must be one the fields were trained on (their scorers know no
    other layer)."""
    for f in fields:
        outside = [i for i in layers if i not in f.train_layers]
        if outside:
            raise SVFArgumentError(f"layers {outside} are outside the training layers "
                                   f"{list(f.train_layers)} of field {f.concept!r}")


def strength_scale(fields: Sequence[SteeringField], layers: int | Sequence[int],
                   unit: str | None = None) -> float:
    """What a relative strength multiplies (``alpha = strength * scale``): the fields' ``unit``
    norm (``robust`` or ``mean_norm``) averaged over ``fields`` and ``layers``.

    The one rule for strengths: :func:`svf.steer` and :func:`svf.steer_requests` call it per
    layer for the concepts of an entry; the evaluation calls it once over its steering layers
    for the scale of its total strengths. ``unit`` None: ``robust`` when every field stores robust norms,
    else ``mean_norm``.
    """
    check_unit(unit)
    fields = list(fields)
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not fields or not layers:
        raise SVFArgumentError("strength_scale needs at least one field and one layer")
    if unit is None:
        unit = "robust" if all(f.unit == "robust" for f in fields) else "mean_norm"
    norm = SteeringField.robust_norm if unit == "robust" else SteeringField.mean_norm
    return sum(norm(f, i) for f in fields for i in layers) / (len(fields) * len(layers))


@dataclass
class SteeringField:
    """A concept scorer over a window of layers, with what steering needs beside it.

    ``mean_norms[i]`` is the mean L2 norm of training layer ``train_layers[i]`` and
    ``robust_norms[i]`` its norm without outlier dimensions (the units of relative strengths);
    ``caa[i]`` the CAA mean-difference vector there (the static baseline); ``covariances[i]``
    the within-class covariance ``[r, r]`` of the scorer's projection there (the
    preconditioned direction). ``natural_B[k]`` is the natural direction's folded matrix
    ``B = A @ M`` ``[m, d]`` at layer ``natural["layers"][k]`` (:mod:`svf.fisher`), and
    ``natural`` its artifact metadata (layers, damping ``lambdas``, sample counts, the damping's
    criterion table); both None for a field without the natural direction.
    ``default_strength``, ``default_direction`` and ``default_target`` are what
    :func:`svf.steer` uses when not told otherwise. Fields saved by a library without the robust
    norms and covariances load with them ``None``: the ``mean_norm`` unit and the gradient
    direction still work.
    """

    scorer: ConceptScorer
    concept: str
    model_name: str
    num_layers: int
    steer_layers: tuple[int, ...]
    mean_norms: torch.Tensor
    caa: torch.Tensor
    default_strength: float = DEFAULT_STRENGTH
    metrics: dict[str, Any] = field(default_factory=dict)
    robust_norms: torch.Tensor | None = None
    covariances: torch.Tensor | None = None
    default_direction: str = "gradient"
    default_target: float | None = None
    natural_B: torch.Tensor | None = None
    natural: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_direction(self.default_direction, "default_direction")
        check_target(self.default_target, "default_target")
        self._check_natural()

    def _check_natural(self) -> None:
        """``natural_B`` and ``natural`` come together, the matrices one per natural layer, each
        a training layer."""
        if (self.natural_B is None) != (self.natural is None):
            raise SVFArgumentError("natural_B and natural must both be given or both be None")
        if self.natural is None:
            return
        layers = self.natural.get("layers") if isinstance(self.natural, dict) else None
        if not isinstance(layers, (list, tuple)) or not set(layers) <= set(self.train_layers):
            raise SVFArgumentError(f"natural['layers'] must list training layers of field "
                                   f"{self.concept!r} ({list(self.train_layers)}), got {layers!r:.100}")
        want = (len(layers), self.scorer.config.m, self.hidden_size)
        if not isinstance(self.natural_B, torch.Tensor) or tuple(self.natural_B.shape) != want:
            got = tuple(self.natural_B.shape) if isinstance(self.natural_B, torch.Tensor) else self.natural_B
            raise SVFArgumentError(f"natural_B must be a tensor of shape {want} (natural layers, m, "
                                   f"d), got {got!r:.100}")

    @property
    def train_layers(self) -> tuple[int, ...]:
        return self.scorer.config.train_layers

    @property
    def hidden_size(self) -> int:
        return self.scorer.config.hidden_size

    def mean_norm(self, layer: int) -> float:
        """Mean activation norm of ``layer`` from training (``alpha = strength * mean_norm``)."""
        return float(self.mean_norms[self.scorer.layer_position(layer)])

    def robust_norm(self, layer: int) -> float:
        """Norm of ``layer``'s training activations without outlier dimensions."""
        if self.robust_norms is None:
            raise SVFArgumentError(f"field {self.concept!r} has no robust norms (saved by an older "
                                   "format): use unit='mean_norm' or retrain it")
        return float(self.robust_norms[self.scorer.layer_position(layer)])

    @property
    def unit(self) -> str:
        """The field's own strength unit: ``robust`` when it stores robust norms."""
        return "mean_norm" if self.robust_norms is None else "robust"

    def covariance(self, layer: int) -> torch.Tensor:
        """The within-class covariance ``[r, r]`` of the scorer's projection at ``layer``."""
        if self.covariances is None:
            raise SVFArgumentError(f"field {self.concept!r} has no covariances (saved by an older "
                                   "format): the preconditioned direction needs a retrained field")
        return self.covariances[self.scorer.layer_position(layer)]

    def natural_matrix(self, layer: int) -> torch.Tensor:
        """The natural direction's folded matrix ``B = A @ M`` ``[m, d]`` at ``layer``."""
        self.scorer.layer_position(layer)  # a training layer
        layers = [] if self.natural is None else list(self.natural["layers"])
        if layer not in layers:
            where = (f"has them only at layers {layers}" if layers
                     else "has no natural-direction matrices")
            raise SVFArgumentError(
                f"direction='natural' at layer {layer}: field {self.concept!r} {where}; estimate "
                "them with svf.fisher.add_natural_direction(field, model, tokenizer, layers=...) "
                "or retrain with TrainConfig(fisher_samples=...) (the Fisher estimate)")
        return self.natural_B[layers.index(layer)]

    def fold(self, layer: int, direction: str = "gradient"):
        """The scorer's kernel form at ``layer`` for ``direction`` (``B`` set when
        preconditioned or natural)."""
        check_direction(direction, "direction")
        if direction == "natural":
            B = self.natural_matrix(layer)
            folded = self.scorer.fold(layer)
            return dataclasses.replace(folded, B=B.to(folded.A).clone())
        cov = self.covariance(layer) if direction == "preconditioned" else None
        return self.scorer.fold(layer, cov)

    def caa_vector(self, layer: int) -> torch.Tensor:
        """CAA direction (positive mean minus negative mean) at ``layer``."""
        return self.caa[self.scorer.layer_position(layer)]

    # ---- artifacts -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        cfg = self.scorer.config
        return {
            "format": "svf-field",
            "format_version": artifacts.FORMAT_VERSION,
            "concept": self.concept,
            "model": {"name": self.model_name, "hidden_size": cfg.hidden_size, "num_layers": self.num_layers},
            "train_layers": list(cfg.train_layers),
            "steer_layers": list(self.steer_layers),
            "hparams": {"r": cfg.r, "de": cfg.de, "m": cfg.m, "eps": cfg.eps, "activation": "gelu_tanh"},
            "default_strength": float(self.default_strength),
            "default_direction": self.default_direction,
            "default_target": None if self.default_target is None else float(self.default_target),
            "natural": self.natural,
            "metrics": self.metrics,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self.scorer, name).detach().float().contiguous() for name in _SCORER_TENSORS}
        out["mean_norms"] = self.mean_norms.float().contiguous()
        out["caa"] = self.caa.float().contiguous()
        if self.robust_norms is not None:
            out["robust_norms"] = self.robust_norms.float().contiguous()
        if self.covariances is not None:
            out["covariances"] = self.covariances.float().contiguous()
        if self.natural_B is not None:
            out[artifacts.NATURAL_TENSOR_NAME] = self.natural_B.float().contiguous()
        return out

    def save(self, path: str | Path) -> Path:
        """Write the artifact (a directory, or a ``.safetensors`` file); returns the file."""
        return artifacts.save_field(path, self.tensors(), self.metadata())

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None, *,
             hidden_size: int | None = None, num_layers: int | None = None) -> SteeringField:
        """Load and validate an artifact (against ``model``'s size, or the ``hidden_size`` and
        ``num_layers`` given, when given). Never unpickles.

        A bad artifact raises ``artifacts.ArtifactError`` naming the file and the problem
        (including a field made for a model of another hidden size or layer count); a
        ``model`` that is not a Hugging Face decoder raises ``SVFArgumentError``.
        """
        kwargs = {"hidden_size": hidden_size, "num_layers": num_layers}
        if model is not None:
            from .hf import check_model, hidden_size, num_layers

            check_model(model)
            kwargs = {"hidden_size": hidden_size(model), "num_layers": num_layers(model)}
        tensors, meta = artifacts.load_field(path, **kwargs)
        hp = meta["hparams"]
        cfg = ScorerConfig(
            hidden_size=meta["model"]["hidden_size"],
            train_layers=tuple(meta["train_layers"]),
            r=hp["r"], de=hp["de"], m=hp["m"], eps=hp["eps"],
        )
        with torch.random.fork_rng(devices=[]):  # the random init must not move the global RNG
            scorer = ConceptScorer(cfg)
        with torch.no_grad():
            for name in _SCORER_TENSORS:
                getattr(scorer, name).copy_(tensors[name])
        scorer.eval()
        return cls(
            scorer=scorer,
            concept=meta["concept"],
            model_name=meta["model"]["name"],
            num_layers=meta["model"]["num_layers"],
            steer_layers=tuple(meta["steer_layers"]),
            mean_norms=tensors["mean_norms"],
            caa=tensors["caa"],
            default_strength=meta["default_strength"],
            metrics=meta["metrics"],
            robust_norms=tensors.get("robust_norms"),
            covariances=tensors.get("covariances"),
            default_direction=meta.get("default_direction", "gradient"),
            default_target=meta.get("default_target"),
            natural_B=tensors.get(artifacts.NATURAL_TENSOR_NAME),
            natural=meta.get("natural"),
        )


def check_unit(unit: object, name: str = "unit") -> None:
    """``unit`` is None (the field's own) or one of :data:`STRENGTH_UNITS`."""
    if unit is not None and unit not in STRENGTH_UNITS:
        raise SVFArgumentError(f"{name} must be None or one of {STRENGTH_UNITS}, got {unit!r}")


def check_direction(direction: object, name: str = "direction") -> None:
    """``direction`` is one of :data:`svf.scorer.DIRECTIONS`."""
    if direction not in DIRECTIONS:
        raise SVFArgumentError(f"{name} must be one of {DIRECTIONS}, got {direction!r}")


def check_target(target: object, name: str = "target") -> None:
    """``target`` is None (open loop) or a probability strictly between 0.5 and 1: the
    scorer's confidence, on the side steered toward, at which the push stops."""
    if target is None:
        return
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.5 < target < 1:
        raise SVFArgumentError(f"{name} must be None or a probability in (0.5, 1), got {target!r}")
