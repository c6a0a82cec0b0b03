"""``SteeringField``: a trained concept field (scorer + metadata) and its artifact I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from svf_kernels import ConstantField, PackedField, RowField, SVFArgumentError

from . import artifacts
from .scorer import ConceptScorer, ScorerConfig

_SCORER_TENSORS = ("R", "layer_emb", "Wg", "Wb", "W1", "b1", "w2", "b2")

#: Per-layer relative strength used when none is given (docs/STEERING.md); a saved artifact
#: keeps the value stored in it.
DEFAULT_STRENGTH = 0.15


@dataclass
class SteeringField:
    """A concept scorer over a window of layers, with what steering needs beside it.

    ``mean_norms[i]`` is the mean L2 norm of training layer ``train_layers[i]`` (for relative
    strengths); ``caa[i]`` the CAA mean-difference vector there (the static baseline).
    ``default_strength`` is the per-layer relative strength :func:`svf.steer` uses when given
    neither ``strength`` nor ``alpha``.
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

    @property
    def train_layers(self) -> tuple[int, ...]:
        return self.scorer.config.train_layers

    @property
    def hidden_size(self) -> int:
        return self.scorer.config.hidden_size

    def mean_norm(self, layer: int) -> float:
        """Mean activation norm of ``layer`` from training (``alpha = strength * mean_norm``)."""
        return float(self.mean_norms[self.scorer.layer_position(layer)])

    def caa_vector(self, layer: int) -> torch.Tensor:
        """CAA direction (positive mean minus negative mean) at ``layer``."""
        return self.caa[self.scorer.layer_position(layer)]

    def row_field(self, layer: int, method: str = "svf", **kwargs: Any) -> RowField:
        """The per-layer field: ``svf`` (folded scorer) or ``caa`` (static vector)."""
        if method == "svf":
            f = self.scorer.fold(layer)
            return PackedField(f.A, f.c, f.w2, f.b2, eps=self.scorer.config.eps, **kwargs)
        if method == "caa":
            return ConstantField(self.caa_vector(layer))
        raise SVFArgumentError(f"method must be 'svf' or 'caa', got {method!r}")

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
            "metrics": self.metrics,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self.scorer, name).detach().float().contiguous() for name in _SCORER_TENSORS}
        out["mean_norms"] = self.mean_norms.float().contiguous()
        out["caa"] = self.caa.float().contiguous()
        return out

    def save(self, path: str | Path) -> Path:
        """Write the artifact (a directory, or a ``.safetensors`` file); returns the file."""
        return artifacts.save_field(path, self.tensors(), self.metadata())

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None) -> SteeringField:
        """Load and validate an artifact (against ``model``'s size when given). Never unpickles.

        A bad artifact raises ``artifacts.ArtifactError`` naming the file and the problem
        (including a field made for a model of another hidden size or layer count); a
        ``model`` that is not a Hugging Face decoder raises ``SVFArgumentError``.
        """
        kwargs = {}
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
        )
