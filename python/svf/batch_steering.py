"""Per-request steering inside one batch: each row its own field and strength, or none.

Attach a set of named fields to a model once (:func:`steer_requests`); before each batched
``generate`` give every row a field name (or ``None``) and a strength
(:meth:`BatchSteering.set_requests`). Each steered layer then runs one
``field_table_update_`` launch for the whole batch (DESIGN.md §3, the field table), with no
Python loop over rows. Entries may steer different layers and hold different numbers of
concepts: a row whose field does not steer a layer gets id -1 there, and tables pad concepts
with a score of +inf (softmin weight exactly 0) and hidden units with zeros (no effect). A
name may also hold a static vector (a :class:`svf.ControlVector`), alone or beside a field
(:mod:`svf.table_entries`): its rows go through the same launch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from svf_kernels import SVFArgumentError

from .arguments import check_bool, check_number
from .control_vectors import ControlVector
from .field_packing import check_fits_model, layer_tables, model_mismatch
from .hf import check_layers, check_model, layer_list
from .steering import Steering
from .steering_field import SteeringField, check_direction, check_target, check_unit
from .table_entries import table_entry

#: What one name steers with: a field, fields (softmin), a control vector, or fields with one
#: control vector (:mod:`svf.table_entries`).
FieldEntry = SteeringField | ControlVector | Sequence[SteeringField | ControlVector]


class BatchSteering:
    """Named fields attached to ``model`` once; each batch row picks one (or none) per call.

    Build it with :func:`steer_requests`. ``set_requests(fields, strengths)`` before each
    batched forward or ``generate`` (or :meth:`generate`, which does both). Strengths are
    relative, as in :func:`svf.steer`: row ``r`` at layer ``i`` moves by
    ``strengths[r] * strength_scale(field, i)`` along its field, and by ``strengths[r] * v``
    along a control vector ``v`` (:mod:`svf.table_entries`). Each field steers along its own
    ``default_direction`` and closed-loop at its own ``default_target`` unless ``direction`` /
    ``target`` are given for all (a static entry is never closed-loop).
    """

    def __init__(self, model: nn.Module, fields: Mapping[str, FieldEntry], *,
                 layers: Sequence[int] | None = None, tau: float = 1.0, normalize: bool = True,
                 positions: str = "default", refresh: int = 1, direction: str | None = None,
                 target: float | None = None, unit: str | None = None) -> None:
        check_model(model)
        check_bool(normalize, "normalize")
        if direction is not None:
            check_direction(direction)
        check_target(target)
        check_unit(unit)
        if not isinstance(fields, Mapping) or not fields:
            raise SVFArgumentError("fields must be a non-empty mapping of name -> SteeringField, "
                                   "ControlVector, or a list of fields with at most one "
                                   "ControlVector")
        for name in fields:
            if not isinstance(name, str) or not name:
                raise SVFArgumentError(f"field names must be non-empty strings, got {name!r}")
        self.names = list(fields)
        layers = layer_list(layers) if layers is not None else None
        self.entries = [table_entry(fields[n], layers, f"field {n!r}") for n in self.names]
        for name, entry in zip(self.names, self.entries):
            check_fits_model(entry.concepts, model)  # so every entry has the same hidden size too
            if entry.vector is not None:
                problem = model_mismatch(f"the control vector of field {name!r}",
                                         entry.vector.hidden_size, None, model)
                if problem:
                    raise SVFArgumentError(problem)
        self.layers = sorted({i for e in self.entries for i in e.layers})
        check_layers(model, self.layers, "steering layers")
        device = next(model.parameters()).device
        self.model, self.device = model, device
        directions = [direction or e.default_direction for e in self.entries]
        # a static entry has no score to gate on: it is never closed-loop
        targets = [None if not e.concepts else target if target is not None else e.default_target
                   for e in self.entries]
        packed = layer_tables(self.entries, tau=tau, normalize=normalize, directions=directions,
                              targets=targets, unit=unit)
        tables = {i: p.table.to(device) for i, p in packed.items()}
        self._id_map = {i: p.id_map.to(device) for i, p in packed.items()}
        self._scales = {i: p.scales.to(device) for i, p in packed.items()}
        # Per-layer per-row tensors, empty until set_requests; Steering.set_row_inputs updates
        # them in place while the batch size stays (a compiled forward keeps the same tensors).
        alphas = {i: torch.zeros(0, device=device) for i in self.layers}
        ids = {i: torch.zeros(0, dtype=torch.long, device=device) for i in self.layers}
        self.steering = Steering(model, tables, alphas, refresh=refresh, positions=positions,
                                 field_ids=ids)

    # -- per call -------------------------------------------------------------------------
    def set_requests(self, fields: Sequence[str | None], strengths: float | Sequence[float] = 0.0
                     ) -> BatchSteering:
        """Row ``r`` of the next batches is steered by ``fields[r]`` (None: unsteered) at
        ``strengths[r]`` (one number: every row). Checked here, once, on the host."""
        if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
            raise SVFArgumentError("fields must be a non-empty sequence of field names (or None), "
                                   "one per row")
        B = len(fields)
        index = {n: g for g, n in enumerate(self.names)}
        unknown = sorted({f for f in fields if f is not None and f not in index}, key=str)
        if unknown:
            raise SVFArgumentError(f"unknown fields {unknown}; attached: {self.names}")
        if isinstance(strengths, (int, float)) and not isinstance(strengths, bool):
            strengths = [float(strengths)] * B
        if isinstance(strengths, str) or not isinstance(strengths, Sequence):
            raise SVFArgumentError("strengths must be a number or a sequence of numbers, one per "
                                   f"row, got {type(strengths).__name__}")
        strengths = list(strengths)
        if len(strengths) != B:
            raise SVFArgumentError(f"strengths has {len(strengths)} entries but fields has {B}")
        for r, s in enumerate(strengths):
            check_number(s, f"strengths[{r}]")
        g1 = torch.tensor([-1 if f is None else index[f] for f in fields], dtype=torch.long) + 1
        g1 = g1.to(self.device)
        s = torch.tensor(strengths, dtype=torch.float32, device=self.device)
        for i in self.layers:
            self.steering.set_row_inputs(i, s * self._scales[i][g1], self._id_map[i][g1])
        return self

    def generate(self, *args, fields: Sequence[str | None],
                 strengths: float | Sequence[float] = 0.0,
                 **kwargs):
        """``model.generate(*args, **kwargs)`` with row ``r`` steered by ``fields[r]``."""
        self.set_requests(fields, strengths)
        if not self.attached:
            raise SVFArgumentError("attach() the batch steering before generate()")
        return self.model.generate(*args, **kwargs)

    # -- attach / detach ------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.steering.attached

    def attach(self) -> BatchSteering:
        """Wrap the steering layers (the model is unchanged otherwise)."""
        self.steering.attach()
        return self

    def detach(self) -> None:
        """Put the original layers back (a no-op when not attached)."""
        self.steering.detach()

    def __enter__(self) -> BatchSteering:  # noqa: PYI034
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def steer_requests(model: nn.Module, fields: Mapping[str, FieldEntry], *,
                   layers: Sequence[int] | None = None, tau: float = 1.0, normalize: bool = True,
                   positions: str = "default", refresh: int = 1, direction: str | None = None,
                   target: float | None = None, unit: str | None = None) -> BatchSteering:
    """Build (not yet attached) per-request steering of ``model`` by named fields.

    ``fields``: name -> a :class:`SteeringField`, a sequence of them combined by softmin, a
    static :class:`svf.ControlVector` (:func:`svf.load_control_vector`; a field's CAA vector:
    :func:`svf.control_vector_from_field`), or a list of fields with one control vector in it
    (the field and the vector together; :mod:`svf.table_entries`).
    ``layers``: the layers every entry steers (default: each entry's own).
    ``direction``, ``target``, ``unit``: as in :func:`svf.steer`, for every field (None:
    each field's own default direction and target).
    ``positions="last"`` makes the steering traceable by ``torch.compile(fullgraph=True)``
    (for left-padded cached decoding it steers the same positions as the default).
    """
    return BatchSteering(model, fields, layers=layers, tau=tau, normalize=normalize,
                         positions=positions, refresh=refresh, direction=direction, target=target,
                         unit=unit)
