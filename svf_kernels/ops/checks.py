"""Argument checks of the ops (DESIGN.md §3), and the conversion of float arguments to tensors.

Host-side and shape-only, so they trace under ``torch.compile`` and never synchronise with the
device; messages are formatted only on failure (they run on every public call). The modules
(:mod:`svf_kernels.modules`) check their parameters once with the same functions.
"""

from __future__ import annotations

import math

import torch

from ..errors import SVFArgumentError
from .reference import STORAGE_DTYPES

HIDDEN_DTYPES = (*STORAGE_DTYPES, torch.float64)  # float64: reference checks only
_PARAM_DTYPES = (torch.float32, torch.float64)
_ID_DTYPES = (torch.int64, torch.int32)

def check_field_args(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    eps: float,
    rows: torch.Tensor | None,
    B: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    band: float = 1.0,
) -> None:
    """Validate the op's arguments against DESIGN.md §3; raise SVFArgumentError naming one.

    Plain ``if``s, messages formatted only on failure: this runs on every public call.
    """
    if not isinstance(hidden, torch.Tensor):
        raise SVFArgumentError(f"hidden must be a tensor, got {type(hidden).__name__}")
    if hidden.dim() != 2:
        raise SVFArgumentError(f"hidden must be [N, d], got shape {tuple(hidden.shape)}")
    if hidden.dtype not in HIDDEN_DTYPES:
        raise SVFArgumentError(f"hidden dtype must be float32, bfloat16 or float16, got {hidden.dtype}")
    if hidden.stride(-1) != 1:
        raise SVFArgumentError("hidden rows must be contiguous in the last dimension")
    n, d = hidden.shape
    device = hidden.device
    for name, t in (("A", A), ("c", c), ("w2", w2), ("b2", b2), ("alpha", alpha)):
        if not isinstance(t, torch.Tensor):
            raise SVFArgumentError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.device != device:
            raise SVFArgumentError(f"{name} is on {t.device} but hidden is on {device}")
        if t.dtype not in _PARAM_DTYPES and t.dtype != hidden.dtype:
            raise SVFArgumentError(
                f"{name} dtype must be float32 or the hidden dtype ({hidden.dtype}), got {t.dtype}"
            )
    if A.dim() != 3 or A.shape[2] != d:
        raise SVFArgumentError(f"A must be [C, m, {d}], got {tuple(A.shape)}")
    C, m = A.shape[0], A.shape[1]
    if C < 1 or m < 1:
        raise SVFArgumentError(f"A must have C >= 1 concepts and m >= 1 units, got {tuple(A.shape)}")
    for name, t, shape in (("c", c, (C, m)), ("w2", w2, (C, m)), ("b2", b2, (C,))):
        if t.shape != shape:
            raise SVFArgumentError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if alpha.shape != (n,):
        raise SVFArgumentError(f"alpha must be a float or a [{n}] tensor, got {tuple(alpha.shape)}")
    check_positive("tau", tau)
    check_positive("eps", eps)
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool:
            raise SVFArgumentError(f"rows must be a bool mask, got {getattr(rows, 'dtype', type(rows))}")
        if rows.shape != (n,):
            raise SVFArgumentError(f"rows must have shape ({n},), got {tuple(rows.shape)}")
        if rows.device != device:
            raise SVFArgumentError(f"rows is on {rows.device} but hidden is on {device}")
    if B is not None:
        _check_like("B", B, A, hidden)
    if target is not None:
        _check_target(target, hidden)
    if band.__class__ is not float or not 0.0 < band < math.inf:  # the common case costs one test
        check_positive("band", band)

def _check_like(name: str, t: object, A: torch.Tensor, hidden: torch.Tensor) -> None:
    """``t`` (B) is a tensor of A's shape on hidden's device, float32 or the hidden dtype."""
    if not isinstance(t, torch.Tensor):
        raise SVFArgumentError(f"{name} must be a tensor or None, got {type(t).__name__}")
    if t.shape != A.shape:
        raise SVFArgumentError(f"{name} must have the shape of A {tuple(A.shape)}, got {tuple(t.shape)}")
    if t.device != hidden.device:
        raise SVFArgumentError(f"{name} is on {t.device} but hidden is on {hidden.device}")
    if t.dtype not in _PARAM_DTYPES and t.dtype != hidden.dtype:
        raise SVFArgumentError(
            f"{name} dtype must be float32 or the hidden dtype ({hidden.dtype}), got {t.dtype}"
        )

def _check_target(target: object, hidden: torch.Tensor) -> None:
    """``target`` is an ``[N]`` float32 / float64 / hidden-dtype tensor on hidden's device."""
    if not isinstance(target, torch.Tensor):
        raise SVFArgumentError(f"target must be None, a float or an [N] tensor, got {type(target).__name__}")
    n = hidden.shape[0]
    if target.shape != (n,):
        raise SVFArgumentError(f"target must be a float or a [{n}] tensor, got shape {tuple(target.shape)}")
    if target.dtype not in _PARAM_DTYPES and target.dtype != hidden.dtype:
        raise SVFArgumentError(
            f"target dtype must be float32, float64 or the hidden dtype ({hidden.dtype}), got {target.dtype}"
        )
    if target.device != hidden.device:
        raise SVFArgumentError(f"target is on {target.device} but hidden is on {hidden.device}")

def check_positive(name: str, value: object) -> None:
    """``value`` is a finite real number > 0 (tau, eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SVFArgumentError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise SVFArgumentError(f"{name} must be finite and > 0, got {value}")

def alpha_tensor(alpha: object, hidden: torch.Tensor) -> torch.Tensor:
    """A float strength as the op's ``[N]`` tensor (checked: a finite number); tensors pass."""
    if isinstance(alpha, torch.Tensor):
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SVFArgumentError(f"alpha must be a finite number or an [N] tensor, got {alpha!r}")
    return _row_tensor(float(alpha), hidden)

def target_tensor(target: object, hidden: torch.Tensor) -> torch.Tensor | None:
    """A float target as the op's ``[N]`` tensor (NaN: no target; infinities are limits that
    never / always gate); None and tensors pass (a tensor is checked with the op's arguments)."""
    if target is None or isinstance(target, torch.Tensor):
        return target
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise SVFArgumentError(f"target must be None, a float or an [N] tensor, got {target!r}")
    return _row_tensor(float(target), hidden)

def _row_tensor(value: float, hidden: torch.Tensor) -> torch.Tensor:
    """``value`` for every row of ``hidden``: float32 (float64 for float64 hidden), its device."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 1:
        return torch.full((0,), value)  # hidden's own check names the problem
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    return torch.full((hidden.shape[0],), value, dtype=dt, device=hidden.device)

def check_table_args(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    field_ids: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    eps: float,
    B: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    band: float = 1.0,
    vectors: torch.Tensor | None = None,
) -> None:
    """Validate the table op's arguments (shapes, dtypes, devices); raise SVFArgumentError.

    Shape-only like :func:`check_field_args`: the id *values* are not read here (that would
    synchronise with the device); kernels treat ids outside ``[0, F)`` as "no steering".
    """
    if not isinstance(A, torch.Tensor) or A.dim() != 4:
        raise SVFArgumentError(f"A must be a table [F, C, m, d], got shape {tuple(getattr(A, 'shape', ()))}")
    F, C, m = A.shape[0], A.shape[1], A.shape[2]
    if F < 1:
        raise SVFArgumentError(f"the table must hold F >= 1 fields, got A of shape {tuple(A.shape)}")
    for name, t, shape in (("c", c, (F, C, m)), ("w2", w2, (F, C, m)), ("b2", b2, (F, C))):
        if not isinstance(t, torch.Tensor):
            raise SVFArgumentError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.shape != shape:
            raise SVFArgumentError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 and A.shape[3] != hidden.shape[1]:
        raise SVFArgumentError(f"A must be [F, C, m, {hidden.shape[1]}], got {tuple(A.shape)}")
    # Everything else is the one-field contract, checked on field 0's slices (B: in full below).
    check_field_args(hidden, A[0], c[0], w2[0], b2[0], alpha, tau, eps, None, None,
                     target, band)
    if B is not None:
        _check_like("B", B, A, hidden)
    if not isinstance(field_ids, torch.Tensor) or field_ids.dtype not in _ID_DTYPES:
        raise SVFArgumentError(
            f"field_ids must be an int64 or int32 tensor, got {getattr(field_ids, 'dtype', type(field_ids))}"
        )
    if field_ids.shape != (hidden.shape[0],):
        raise SVFArgumentError(f"field_ids must have shape ({hidden.shape[0]},), got {tuple(field_ids.shape)}")
    if field_ids.device != hidden.device:
        raise SVFArgumentError(f"field_ids is on {field_ids.device} but hidden is on {hidden.device}")
    if vectors is not None:
        _check_vectors(vectors, F, hidden)
    for name, t in (("A", A), ("B", B), ("c", c), ("w2", w2), ("b2", b2), ("vectors", vectors)):
        if t is not None and not t.is_contiguous():
            raise SVFArgumentError(f"{name} of a field table must be contiguous")


def _check_vectors(vectors: object, F: int, hidden: torch.Tensor) -> None:
    """``vectors`` is an ``[F, d]`` float32 / float64 / hidden-dtype tensor on hidden's device."""
    if not isinstance(vectors, torch.Tensor):
        raise SVFArgumentError(f"vectors must be None or an [F, d] tensor, got {type(vectors).__name__}")
    d = hidden.shape[1] if isinstance(hidden, torch.Tensor) and hidden.dim() == 2 else vectors.shape[-1]
    if vectors.shape != (F, d):
        raise SVFArgumentError(f"vectors must have shape ({F}, {d}) (one static vector per field), "
                               f"got {tuple(vectors.shape)}")
    if vectors.device != hidden.device:
        raise SVFArgumentError(f"vectors is on {vectors.device} but hidden is on {hidden.device}")
    if vectors.dtype not in _PARAM_DTYPES and vectors.dtype != hidden.dtype:
        raise SVFArgumentError(
            f"vectors dtype must be float32 or the hidden dtype ({hidden.dtype}), got {vectors.dtype}"
        )
