"""Pack trained fields into the kernels' row fields for one layer (DESIGN.md §2-§3).

:func:`svf.steer` packs one entry (the concepts combined at a layer) into a
:class:`PackedField` ``[C, m, d]``; :func:`svf.steer_requests` packs F entries into a
:class:`FieldTable` ``[F, C, m, d]``. Both fold each scorer at the layer and pad hidden units
with zeros (they add exactly nothing); a table pads missing concepts with ``b2 = +inf`` (score
+inf, softmin weight exactly 0). Every direction but the gradient adds the folded ``B``
(preconditioned or natural; a table whose entries mix directions gives gradient entries
``B = A``); a closed-loop target becomes the score ``logit(target)``. A table's static
entries (:mod:`svf.table_entries`) get a zero scorer and their vectors. The checks live here
too, so both paths accept the same fields and give the same strengths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from svf_kernels import FieldTable, PackedField, RowField, StaticVector, SVFArgumentError

from .hf import hidden_size, num_layers
from .scorer import ScorerConfig
from .steering_field import (
    SteeringField,
    check_direction,
    check_target,
    target_score,
)
from .table_entries import TableEntry, table_entry

#: The steering methods of :func:`row_field`: SVF's field, or the static CAA vector.
STEER_METHODS = ("svf", "caa")


def _folded(fields: Sequence[SteeringField], layer: int, direction: str = "gradient",
            m: int | None = None) -> tuple[torch.Tensor, ...]:
    """The fields' folded scorers at ``layer``, hidden units zero-padded to ``m`` (default: the
    widest), stacked: ``A [C, m, d]``, ``c [C, m]``, ``w2 [C, m]``, ``b2 [C]``, ``B [C, m, d]``
    (``B`` is ``A`` for the gradient direction)."""
    folded = [f.fold(layer, direction) for f in fields]
    m = max(x.A.shape[0] for x in folded) if m is None else m
    pad = [m - x.A.shape[0] for x in folded]
    return (torch.stack([nn.functional.pad(x.A, (0, 0, 0, p)) for x, p in zip(folded, pad)]),
            torch.stack([nn.functional.pad(x.c, (0, p)) for x, p in zip(folded, pad)]),
            torch.stack([nn.functional.pad(x.w2, (0, p)) for x, p in zip(folded, pad)]),
            torch.cat([x.b2.reshape(1) for x in folded]),
            torch.stack([nn.functional.pad(x.A if x.B is None else x.B, (0, 0, 0, p))
                         for x, p in zip(folded, pad)]))


def common_eps(fields: Sequence[SteeringField], layer: int) -> float:
    """The scorer ``eps`` the ``fields`` share (one packed field or table takes one ``eps``);
    fields trained with different ones cannot be packed together at ``layer``."""
    values = sorted({f.scorer.config.eps for f in fields})
    if len(values) > 1:
        raise SVFArgumentError(f"the fields packed together at layer {layer} were trained with "
                               f"different eps {values}; they must share one")
    return values[0] if values else ScorerConfig.eps


def packed_field(fields: Sequence[SteeringField], layer: int, *, tau: float = 1.0,
                 normalize: bool = True, direction: str = "gradient",
                 target: float | None = None) -> PackedField:
    """One entry's concepts at ``layer`` as one :class:`PackedField` (softmin over concepts),
    along ``direction``, closed-loop at probability ``target`` when given."""
    check_target(target, "target")
    A, c, w2, b2, B = _folded(fields, layer, direction)
    return PackedField(A, c, w2, b2, tau=tau, normalize=normalize, eps=common_eps(fields, layer),
                       B=None if direction == "gradient" else B,
                       target=None if target is None else target_score(target))


def row_field(fields: Sequence[SteeringField], layer: int, method: str = "svf", *,
              tau: float = 1.0, normalize: bool = True, direction: str = "gradient",
              target: float | None = None) -> RowField:
    """One entry's field at ``layer`` for ``method``: ``svf``, the concepts' folded scorers
    (:func:`packed_field`); ``caa``, their CAA vectors as one :class:`StaticVector` (the sum of
    the unit vectors, so each concept counts alike)."""
    if method == "svf":
        return packed_field(fields, layer, tau=tau, normalize=normalize, direction=direction,
                            target=target)
    if method == "caa":
        vectors = [f.caa_vector(layer) / f.caa_vector(layer).norm() for f in fields]
        return StaticVector(torch.stack(vectors).sum(0))
    raise SVFArgumentError(f"method must be one of {STEER_METHODS}, got {method!r}")


def field_table(entries: Sequence[object], layer: int, *, tau: float = 1.0,
                normalize: bool = True, directions: Sequence[str] | None = None,
                targets: Sequence[float | None] | None = None, unit: str | None = None) -> FieldTable:
    """F entries at ``layer`` as one :class:`FieldTable`, padded to common C and m (each entry:
    a :class:`TableEntry` or what :func:`table_entry` takes); entry ``f`` steers along
    ``directions[f]`` (default: gradient), closed-loop at ``targets[f]`` (None: open loop). An
    entry with no field part at ``layer`` (a static entry) gets a zero scorer; entries with a
    vector there give the table its ``vectors`` (``v / scale``: strength ``s`` adds ``s * v``)."""
    entries = [table_entry(e, what=f"entries[{f}]") for f, e in enumerate(entries)]
    directions = list(directions) if directions is not None else ["gradient"] * len(entries)
    targets = list(targets) if targets is not None else [None] * len(entries)
    for f, (direction, target) in enumerate(zip(directions, targets)):
        check_direction(direction, f"directions[{f}]")
        check_target(target, f"targets[{f}]")
    fielded = [e for e in entries if e.has_field(layer)]
    m = max((f.scorer.W1.shape[0] for e in fielded for f in e.concepts), default=1)  # hidden units
    C = max((len(e.concepts) for e in fielded), default=1)
    d = entries[0].hidden_size
    A, c, w2, b2, B, vectors = [], [], [], [], [], []
    for entry, direction in zip(entries, directions):
        if entry.has_field(layer):
            parts = _folded(entry.concepts, layer, direction, m)
        else:  # a zero scorer: score 0, direction 0
            parts = (torch.zeros(1, m, d), torch.zeros(1, m), torch.zeros(1, m), torch.zeros(1),
                     torch.zeros(1, m, d))
        extra = C - parts[0].shape[0]
        A.append(nn.functional.pad(parts[0], (0, 0, 0, 0, 0, extra)))
        c.append(nn.functional.pad(parts[1], (0, 0, 0, extra)))
        w2.append(nn.functional.pad(parts[2], (0, 0, 0, extra)))
        b2.append(nn.functional.pad(parts[3], (0, extra), value=math.inf))
        B.append(nn.functional.pad(parts[4], (0, 0, 0, 0, 0, extra)))
        v = entry.table_vector(layer, unit)
        vectors.append(torch.zeros(d) if v is None else v.float())
    closed = any(t is not None for t in targets)
    scores = torch.tensor([math.nan if t is None else target_score(t) for t in targets])
    eps = common_eps([f for e in fielded for f in e.concepts], layer)
    return FieldTable(torch.stack(A), torch.stack(c), torch.stack(w2), torch.stack(b2),
                      tau=tau, normalize=normalize, eps=eps,
                      B=None if all(d == "gradient" for d in directions) else torch.stack(B),
                      targets=scores if closed else None,
                      vectors=torch.stack(vectors) if any(e.has_vector(layer) for e in entries) else None)


def model_mismatch(what: str, width: int, layer_count: int | None, model: nn.Module) -> str | None:
    """Why something made for ``width`` / ``layer_count`` does not fit ``model`` (worded as
    :func:`svf.artifacts.load_field` words it), or None when it fits."""
    if width != hidden_size(model):
        return f"{what} is for hidden_size {width} but the model has {hidden_size(model)}"
    if layer_count is not None and layer_count != num_layers(model):
        return (f"{what} is for a model with {layer_count} layers but the model has "
                f"{num_layers(model)}")
    return None


def check_fits_model(fields: Sequence[SteeringField], model: nn.Module) -> None:
    """Every field was trained for ``model``'s hidden size and layer count; else
    :class:`SVFArgumentError` naming the field and both sizes."""
    for f in fields:
        problem = model_mismatch(f"field {f.concept!r}", f.hidden_size, f.num_layers, model)
        if problem:
            raise SVFArgumentError(problem)


@dataclass
class LayerTable:
    """Every entry that steers one layer, packed for per-row steering there.

    ``table`` holds the entries that steer the layer; ``id_map[g + 1]`` is entry ``g``'s row
    in it (``-1``: entry ``g`` does not steer this layer; ``id_map[0] = -1`` is "no field");
    ``scales[g + 1]`` is what a relative strength of entry ``g`` multiplies here
    (:meth:`TableEntry.scale`).
    """

    table: FieldTable
    id_map: torch.Tensor
    scales: torch.Tensor


def layer_tables(entries: Sequence[TableEntry], *, tau: float = 1.0, normalize: bool = True,
                 directions: Sequence[str], targets: Sequence[float | None],
                 unit: str | None = None) -> dict[int, LayerTable]:
    """One :class:`LayerTable` per layer that any entry steers (entry ``g`` steers
    ``entries[g].layers``, along ``directions[g]``, closed-loop at ``targets[g]``), keyed by
    layer."""
    tables = {}
    for i in sorted({i for e in entries for i in e.layers}):
        members = [g for g, e in enumerate(entries) if i in e.layers]
        table = field_table([entries[g] for g in members], i, tau=tau, normalize=normalize,
                            directions=[directions[g] for g in members],
                            targets=[targets[g] for g in members], unit=unit)
        id_map = torch.full((len(entries) + 1,), -1, dtype=torch.long)
        scales = torch.zeros(len(entries) + 1)
        for local, g in enumerate(members):
            id_map[g + 1] = local
            scales[g + 1] = entries[g].scale(i, unit)
        tables[i] = LayerTable(table, id_map, scales)
    return tables
