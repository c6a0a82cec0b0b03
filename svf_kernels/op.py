"""``svf_kernels.field_update_``: the public op, registered with ``torch.library``.

The Python wrapper checks arguments (shapes, dtypes, devices; host-side, shape-only so it
traces under ``torch.compile``), turns a float ``alpha`` into a per-row tensor, and calls
``torch.ops.svf.field_update_``. The registered op picks its backend at one dispatch point
(:mod:`svf_kernels.dispatch`) and has a shape-only fake implementation for compilation.
"""

from __future__ import annotations

import torch

from .dispatch import select_backend
from .errors import SVFArgumentError
from .reference import ACTIVATIONS, STORAGE_DTYPES


@torch.library.custom_op("svf::field_update_", mutates_args=("hidden",))
def _field_update_op(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    normalize: bool,
    activation: str,
    eps: float,
    rows: torch.Tensor | None,
) -> torch.Tensor:
    backend = select_backend(hidden.device)
    return backend.impl(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows)


@_field_update_op.register_fake
def _field_update_fake(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows):
    return hidden.new_empty((hidden.shape[0], A.shape[0]), dtype=torch.float32)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise SVFArgumentError(message)


def check_field_args(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    activation: str,
    eps: float,
    rows: torch.Tensor | None,
) -> None:
    """Validate the op's arguments against DESIGN.md §3; raise SVFArgumentError naming one."""
    _check(isinstance(hidden, torch.Tensor), "hidden must be a tensor")
    _check(hidden.dim() == 2, f"hidden must be [N, d], got shape {tuple(hidden.shape)}")
    ok_storage = hidden.dtype in STORAGE_DTYPES or hidden.dtype == torch.float64
    _check(ok_storage, f"hidden dtype must be float32, bfloat16 or float16, got {hidden.dtype}")
    _check(hidden.stride(-1) == 1, "hidden rows must be contiguous in the last dimension")
    n, d = hidden.shape
    _check(A.dim() == 3 and A.shape[2] == d, f"A must be [C, m, {d}], got {tuple(A.shape)}")
    C, m = A.shape[0], A.shape[1]
    _check(C >= 1 and m >= 1, f"A must have C >= 1 concepts and m >= 1 units, got {tuple(A.shape)}")
    for name, t, shape in (("c", c, (C, m)), ("w2", w2, (C, m)), ("b2", b2, (C,))):
        _check(tuple(t.shape) == shape, f"{name} must have shape {shape}, got {tuple(t.shape)}")
    for name, t in (("A", A), ("c", c), ("w2", w2), ("b2", b2), ("alpha", alpha)):
        _check(t.device == hidden.device, f"{name} is on {t.device} but hidden is on {hidden.device}")
        _check(
            t.dtype in (torch.float32, torch.float64, hidden.dtype),
            f"{name} dtype must be float32 or the hidden dtype ({hidden.dtype}), got {t.dtype}",
        )
    _check(tuple(alpha.shape) == (n,), f"alpha must be a float or a [{n}] tensor, got {tuple(alpha.shape)}")
    _check(tau > 0, f"tau must be > 0, got {tau}")
    _check(eps > 0, f"eps must be > 0, got {eps}")
    _check(activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if rows is not None:
        _check(rows.dtype == torch.bool, f"rows must be a bool mask, got {rows.dtype}")
        _check(tuple(rows.shape) == (n,), f"rows must have shape ({n},), got {tuple(rows.shape)}")
        _check(rows.device == hidden.device, f"rows is on {rows.device} but hidden is on {hidden.device}")


def field_update_(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: float | torch.Tensor,
    *,
    tau: float = 1.0,
    normalize: bool = True,
    activation: str = "gelu_tanh",
    eps: float = 1e-6,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move each row of ``hidden`` ``[N, d]`` along the field, in place; return scores ``[N, C]``.

    See :mod:`svf_kernels.reference` for the exact arithmetic.
    """
    if not isinstance(alpha, torch.Tensor):
        dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        alpha = torch.full((hidden.shape[0],), float(alpha), dtype=dt, device=hidden.device)
    check_field_args(hidden, A, c, w2, b2, alpha, tau, activation, eps, rows)
    return _field_update_op(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), activation, float(eps), rows)
