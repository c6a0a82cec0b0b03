"""The steering methods the evaluation compares, as per-layer row fields behind one interface.

Every method is a map ``layer -> RowField`` plus the layers it steers; they differ only in the
field. The evaluation compares methods at a ``total_strength`` T: a *total* displacement
``T * scale`` (``scale``: :func:`svf.steering_field.strength_scale` of the concept's field over
the evaluation's steering layers, the robust strength unit of docs/STEERING.md), split evenly
over a method's L layers (each moves ``T * scale / L``, :func:`layer_alpha`), so a 4-layer
method does not get 4x the push of a 1-layer one. Negative T steers away from the concept. This
differs from the per-layer ``strength`` of :func:`svf.steer` (docs/STEERING.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

from svf_kernels import RowField, SVFArgumentError

from ..field_packing import row_field
from ..steering import Steering
from ..steering_field import SteeringField

#: Display order: base (no steering), static vectors, KNN, then SVF variants.
EVAL_METHODS = ("base", "caa-1", "caa-multi", "knn", "svf-1", "svf-indep", "svf-shared")


@dataclass
class Method:
    """One method: the field at each steered layer (empty for ``base``)."""

    name: str
    fields: dict[int, RowField]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.fields))


def build_methods(
    shared: SteeringField,
    layers: Sequence[int],
    one_layer: int,
    *,
    independent: Mapping[int, SteeringField] | None = None,
    knn: Mapping[int, RowField] | None = None,
) -> dict[str, Method]:
    """The methods for one concept: CAA and SVF at ``one_layer`` and at ``layers``; SVF with
    the shared concept space (``shared``) and, when given, with one independently trained
    scorer per layer (``independent``); KNN fields when given."""
    layers = sorted(layers)
    if not layers or one_layer not in layers:
        raise SVFArgumentError(f"one_layer {one_layer} must be one of the steering layers {layers}")
    out = {
        "base": Method("base", {}),
        "caa-1": Method("caa-1", {one_layer: row_field([shared], one_layer, "caa")}),
        "caa-multi": Method("caa-multi", {i: row_field([shared], i, "caa") for i in layers}),
        "svf-1": Method("svf-1", {one_layer: row_field([shared], one_layer, "svf")}),
        "svf-shared": Method("svf-shared", {i: row_field([shared], i, "svf") for i in layers}),
    }
    if independent is not None:
        missing = sorted(set(layers) - set(independent))
        if missing:
            raise SVFArgumentError(f"no independent scorer for layers {missing}")
        out["svf-indep"] = Method("svf-indep", {i: row_field([independent[i]], i, "svf") for i in layers})
    if knn is not None:
        missing = sorted(set(layers) - set(knn))
        if missing:
            raise SVFArgumentError(f"no KNN field for layers {missing}")
        out["knn"] = Method("knn", {i: knn[i] for i in layers})
    return {name: out[name] for name in EVAL_METHODS if name in out}


def layer_alpha(total_strength: float, scale: float, n_layers: int) -> float:
    """The displacement each of ``n_layers`` steered layers applies for ``total_strength``:
    an equal share of ``total_strength * scale``."""
    return total_strength * scale / n_layers


def steer_by_method(model, method: Method, total_strength: float, scale: float, *, refresh: int = 1):
    """Context manager that steers ``model`` by ``method`` at total displacement
    ``total_strength * scale``, each of its layers by an equal share (:func:`layer_alpha`; a
    no-op for ``base`` or total strength 0); ``refresh``: recompute the direction every
    ``refresh`` generated tokens (DESIGN.md §4)."""
    if not method.fields or total_strength == 0:
        return nullcontext()
    per_layer = layer_alpha(total_strength, scale, len(method.fields))
    return Steering(model, dict(method.fields), dict.fromkeys(method.fields, per_layer), refresh=refresh)
