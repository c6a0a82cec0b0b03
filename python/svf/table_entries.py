"""What one name steers with in per-request steering: a field, a static vector, or both.

:func:`svf.steer_requests` and the vLLM plugin serve named *entries*. An entry is a trained
field (one :class:`SteeringField`, or several combined by softmin), a static entry (a
:class:`svf.ControlVector`: a GGUF or safetensors control vector, or a field's CAA vector
exported by :func:`svf.control_vector_from_field`), or a field and a control vector together
(a list of fields with one control vector in it). All of them go through the same per-layer
field table (DESIGN.md §3, static vectors): a static part is a field with a zero scorer and
its vector.

Layers and strengths: the field part steers ``layers`` when given (every one must be a
training layer of the fields), else the first field's steering layers; the vector part adds
its vector at those of the entry's layers where it has a non-zero one; the entry steers the
given layers, else the union of both parts' own. A relative strength ``s`` moves a layer with
a field part by ``s * strength_scale(fields, layer)`` along the field and adds ``s * v`` (the
vector as it is) there; a layer with the vector alone moves by ``s * v``, as
:func:`svf.steer` moves a control vector. A request's absolute ``alpha`` replaces ``s * scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from svf_kernels import SVFArgumentError

from .control_vectors import ControlVector
from .hf import distinct_layers
from .steering_field import SteeringField, check_train_layers, strength_scale


@dataclass(frozen=True)
class TableEntry:
    """One named entry, resolved: ``concepts`` (softmin; empty for a static entry) steering
    ``field_layers``, ``vector`` (or None) adding at ``vector_layers``, and the entry's
    ``layers`` (their union, or the layers asked for) and ``default_strength``."""

    concepts: tuple[SteeringField, ...]
    vector: ControlVector | None
    field_layers: tuple[int, ...]
    vector_layers: tuple[int, ...]
    layers: tuple[int, ...]
    default_strength: float

    @property
    def hidden_size(self) -> int:
        return self.concepts[0].hidden_size if self.concepts else self.vector.hidden_size

    @property
    def default_direction(self) -> str:
        return self.concepts[0].default_direction if self.concepts else "gradient"

    @property
    def default_target(self) -> float | None:
        return self.concepts[0].default_target if self.concepts else None

    def has_field(self, layer: int) -> bool:
        return layer in self.field_layers

    def has_vector(self, layer: int) -> bool:
        return layer in self.vector_layers

    def scale(self, layer: int, unit: str | None = None) -> float:
        """What a relative strength multiplies at ``layer``: the fields' strength scale where
        the field steers, else the vector's norm."""
        if self.has_field(layer):
            return strength_scale(self.concepts, layer, unit)
        return self.vector.norm(layer)

    def table_vector(self, layer: int, unit: str | None = None):
        """The entry's row of the table's ``vectors`` at ``layer`` (``v / scale``, so that
        ``alpha = s * scale`` adds ``s * v``), or None where it has no vector."""
        if not self.has_vector(layer):
            return None
        return self.vector.vectors[layer] / self.scale(layer, unit)


def _parts(value: object, what: str) -> tuple[list[SteeringField], ControlVector | None]:
    if isinstance(value, SteeringField):
        return [value], None
    if isinstance(value, ControlVector):
        return [], value
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else None
    vectors = [x for x in items or () if isinstance(x, ControlVector)]
    fields = [x for x in items or () if isinstance(x, SteeringField)]
    if items is None or len(fields) + len(vectors) != len(items) or not fields or len(vectors) > 1:
        raise SVFArgumentError(f"{what} must be a SteeringField, a ControlVector, or a non-empty "
                               f"list of SteeringFields with at most one ControlVector, got "
                               f"{value!r:.200}")
    return fields, (vectors[0] if vectors else None)


def table_entry(value: object, layers: Sequence[int] | None = None, what: str = "entry"
                ) -> TableEntry:
    """``value`` (a field, fields, a control vector, or fields with one control vector) as a
    :class:`TableEntry` steering ``layers`` (None: its own; see the module docstring)."""
    if isinstance(value, TableEntry):
        if layers is None:
            return value
        value = [*value.concepts, value.vector] if value.concepts and value.vector else \
            (list(value.concepts) or value.vector)
    concepts, vector = _parts(value, what)
    if concepts and vector is not None and vector.hidden_size != concepts[0].hidden_size:
        raise SVFArgumentError(f"{what}: the control vector is for hidden size "
                               f"{vector.hidden_size} but the fields for {concepts[0].hidden_size}")
    asked = distinct_layers(layers) if layers is not None else None
    field_layers: tuple[int, ...] = ()
    if concepts:
        field_layers = tuple(asked if asked is not None else distinct_layers(concepts[0].steer_layers))
        try:
            check_train_layers(concepts, field_layers)
        except SVFArgumentError as exc:
            raise SVFArgumentError(f"{what}: {exc}") from None
    vector_layers: tuple[int, ...] = ()
    if vector is not None:
        candidates = asked if asked is not None else vector.layers
        vector_layers = tuple(i for i in candidates if i in vector.vectors and vector.norm(i) > 0)
        if not concepts:
            missing = [i for i in candidates if i not in vector.vectors]
            if missing:
                raise SVFArgumentError(f"{what}: layers {missing} have no vector in the control "
                                       f"vector (its layers: {list(vector.layers)})")
            if not vector_layers:
                raise SVFArgumentError(f"{what}: every vector of layers {list(candidates)} is "
                                       "zero: nothing to steer")
    own = tuple(asked) if asked is not None else tuple(sorted({*field_layers, *vector_layers}))
    if not own:
        raise SVFArgumentError(f"{what} steers no layer")
    default = concepts[0].default_strength if concepts else 1.0
    return TableEntry(tuple(concepts), vector, field_layers, vector_layers, own, float(default))
