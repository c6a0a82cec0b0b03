"""Preallocated rows of the engine's field tables for entries loaded while it runs.

A table with slots holds the pinned entries' rows first, then ``slots`` rows of a fixed width
(``C`` concepts of ``m`` hidden units, a direction matrix ``B`` and a target per row), all zero
until an entry is written into one. Writing copies into the existing tensors, so a compiled
graph, or a replayed CUDA graph, keeps reading the same storage. :class:`SlotCache` decides
which slot an entry goes to: a free one, else the least recently used one that no running
request needs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Collection

import torch
from torch import nn

from svf_kernels import FieldTable, SVFArgumentError


def slot_table(base: FieldTable | None, slots: int, *, hidden_size: int, m: int, C: int,
               eps: float, tau: float = 1.0, normalize: bool = True) -> FieldTable:
    """``base``'s rows (None: no rows) followed by ``slots`` empty rows, every row ``C`` concepts
    of ``m`` units wide (``base`` padded: zero units, concepts with ``b2 = +inf``), with ``B`` and
    ``targets`` (NaN: open loop) for every row. An empty row is a zero scorer: it adds nothing."""
    d = hidden_size
    rows = slots + (0 if base is None else base.num_fields)
    A, c, w2 = torch.zeros(rows, C, m, d), torch.zeros(rows, C, m), torch.zeros(rows, C, m)
    b2, B = torch.zeros(rows, C), torch.zeros(rows, C, m, d)
    targets = torch.full((rows,), math.nan)
    vectors = None
    if base is not None:
        if base.hidden_size != d:
            raise SVFArgumentError(f"the table is for hidden size {base.hidden_size}, not {d}")
        F, Cb, mb = base.A.shape[:3]
        if Cb > C or mb > m:
            raise SVFArgumentError(f"the pinned rows have {Cb} concepts of {mb} units; the slots "
                                   f"hold {C} of {m}")
        write_rows(A, c, w2, b2, B, targets, slice(0, F), base)
        if base.vectors is not None:
            vectors = torch.zeros(rows, d)
            vectors[:F] = base.vectors
        tau, normalize, eps = base.tau, base.normalize, base.eps
    return FieldTable(A, c, w2, b2, tau=tau, normalize=normalize, eps=eps, B=B, targets=targets,
                      vectors=vectors)


def write_rows(A: torch.Tensor, c: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
               B: torch.Tensor, targets: torch.Tensor, rows: slice, source: FieldTable) -> None:
    """Copy ``source``'s rows into ``rows`` of the given table tensors, padded to their width
    (missing units zero, missing concepts ``b2 = +inf``; ``B``: ``source.B`` or its ``A``)."""
    C, m = A.shape[1:3]
    F, Cs, ms = source.A.shape[:3]
    pad_c, pad_m = C - Cs, m - ms
    src_B = source.A if source.B is None else source.B
    A[rows].copy_(nn.functional.pad(source.A, (0, 0, 0, pad_m, 0, pad_c)))
    B[rows].copy_(nn.functional.pad(src_B, (0, 0, 0, pad_m, 0, pad_c)))
    c[rows].copy_(nn.functional.pad(source.c, (0, pad_m, 0, pad_c)))
    w2[rows].copy_(nn.functional.pad(source.w2, (0, pad_m, 0, pad_c)))
    b2[rows].copy_(nn.functional.pad(source.b2, (0, pad_c), value=math.inf))
    targets[rows].copy_(torch.full((F,), math.nan) if source.targets is None else source.targets)


def write_slot(table: FieldTable, row: int, source: FieldTable) -> None:
    """Put the one-row ``source`` into row ``row`` of ``table`` (a :func:`slot_table`), in place."""
    if source.num_fields != 1 or source.vectors is not None:
        raise SVFArgumentError("a slot takes one field row without a static vector")
    if source.eps != table.eps:
        raise SVFArgumentError(f"the entry's scorer has eps {source.eps:g}; the engine's tables "
                               f"use {table.eps:g}")
    b = table._buffers
    with torch.no_grad():
        staged = [torch.empty_like(b[k][row:row + 1], device="cpu")
                  for k in ("A", "c", "w2", "b2", "B", "targets")]
        write_rows(*staged, slice(0, 1), source)
        for k, value in zip(("A", "c", "w2", "b2", "B", "targets"), staged):
            b[k][row:row + 1].copy_(value)


class SlotCache:
    """Which of ``size`` slots holds which entry (by key), least recently used first."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._slots: OrderedDict[str, int] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str) -> int:
        """The slot of resident ``key``, marked as just used."""
        self._slots.move_to_end(key)
        return self._slots[key]

    def place(self, key: str, needed: Collection[str]) -> tuple[int, str | None]:
        """A slot for ``key`` (not resident): a free one, else the least recently used whose
        entry is not in ``needed``; returns it and the key it evicts (None: it was free).
        Raises when every slot holds a needed entry."""
        if len(self._slots) < self.size:
            slot, evicted = min(set(range(self.size)) - set(self._slots.values())), None
        else:
            evicted = next((k for k in self._slots if k not in needed), None)
            if evicted is None:
                raise SVFArgumentError(f"all {self.size} entry slots hold entries that running "
                                       "requests use")
            slot = self._slots.pop(evicted)
        self._slots[key] = slot
        return slot, evicted

    def keys(self) -> list[str]:
        """The resident keys, least recently used first."""
        return list(self._slots)
