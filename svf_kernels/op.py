"""``svf_kernels.field_update_``: the public op, registered with ``torch.library``.

The Python wrapper checks arguments (shapes, dtypes, devices; host-side, shape-only so it
traces under ``torch.compile``), turns a float ``alpha`` (and a float ``target``) into a per-row
tensor, and calls
``torch.ops.svf.field_update_``. The registered op has one Python kernel that picks the
backend at one dispatch point (:mod:`svf_kernels.dispatch`), and a shape-only fake
implementation so ``torch.compile(fullgraph=True)`` traces through it. When the extension is
built, its C++ kernels take the op's CPU/CUDA calls first and hand back to the same dispatch
whatever they do not serve.
"""

from __future__ import annotations

import math

import torch

from .dispatch import select_backend
from .errors import SVFArgumentError
from .reference import ACTIVATIONS, STORAGE_DTYPES

# The schema of DESIGN.md §3. Defined with ``torch.library.Library`` (not ``custom_op``): the
# call path is the dispatcher plus one Python hop, ~5 µs; ``custom_op`` adds ~150 µs per call,
# more than the whole decode-time kernel.
SCHEMA = (
    "field_update_(Tensor(a!) hidden, Tensor A, Tensor c, Tensor w2, Tensor b2, Tensor alpha, "
    "float tau, bool normalize, str activation, float eps, Tensor? rows, Tensor? B, "
    "Tensor? target, float band) -> Tensor"
)
_LIB = torch.library.Library("svf", "DEF")
_LIB.define(SCHEMA)


def _dispatch(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows, B, target, band):
    """The op's one kernel for every device: hand over to the backend chosen for ``hidden``."""
    backend = select_backend(hidden.device, hidden.dtype, activation)
    if B is None and target is None:
        return backend.impl(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows)
    return backend.impl(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows,
                        B=B, target=target, band=band)


_LIB.impl("field_update_", _dispatch, "CompositeExplicitAutograd")
# The compiled extension also registers C++ kernels for the CPU (and CUDA) keys of
# ``field_update_`` (csrc/registration.cpp): those calls skip the Python hop. What they do not
# serve (another SVF_BACKEND, float64, another activation) comes back here through this twin.
_LIB.define(SCHEMA.replace("field_update_(", "_field_update_python(", 1))
_LIB.impl("_field_update_python", _dispatch, "CompositeExplicitAutograd")


@torch.library.register_fake("svf::field_update_", lib=_LIB)
def _field_update_fake(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows, B,
                       target, band):
    """Shape-only implementation for torch.compile / FakeTensor: scores are float32 [N, C]."""
    return hidden.new_empty((hidden.shape[0], A.shape[0]), dtype=torch.float32)


field_update_op = torch.ops.svf.field_update_.default

# The field-table variant (DESIGN.md §3, last paragraph): F fields stacked, one per-row id.
TABLE_SCHEMA = (
    "field_table_update_(Tensor(a!) hidden, Tensor A, Tensor c, Tensor w2, Tensor b2, "
    "Tensor field_ids, Tensor alpha, float tau, bool normalize, str activation, float eps, "
    "Tensor? B, Tensor? target, float band) -> Tensor"
)
_LIB.define(TABLE_SCHEMA)


def _table_dispatch(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize, activation, eps, B,
                    target, band):
    """The table op's one kernel: the same backend choice, with ``field_ids``."""
    backend = select_backend(hidden.device, hidden.dtype, activation)
    if B is None and target is None:
        return backend.impl(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, None,
                            field_ids)
    return backend.impl(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, None,
                        field_ids, B=B, target=target, band=band)


_LIB.impl("field_table_update_", _table_dispatch, "CompositeExplicitAutograd")
_LIB.define(TABLE_SCHEMA.replace("field_table_update_(", "_field_table_update_python(", 1))
_LIB.impl("_field_table_update_python", _table_dispatch, "CompositeExplicitAutograd")


@torch.library.register_fake("svf::field_table_update_", lib=_LIB)
def _field_table_update_fake(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize, activation, eps,
                             B, target, band):
    """Shape-only implementation: scores are float32 [N, C]."""
    return hidden.new_empty((hidden.shape[0], A.shape[1]), dtype=torch.float32)


field_table_update_op = torch.ops.svf.field_table_update_.default
_ID_DTYPES = (torch.int64, torch.int32)


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
    if hidden.dtype not in _HIDDEN_DTYPES:
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
    _check_positive("tau", tau)
    _check_positive("eps", eps)
    if activation not in ACTIVATIONS:
        raise SVFArgumentError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
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
        _check_positive("band", band)


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


def _check_positive(name: str, value: object) -> None:
    """``value`` is a finite real number > 0 (tau, eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SVFArgumentError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise SVFArgumentError(f"{name} must be finite and > 0, got {value}")


def _alpha_tensor(alpha: object, hidden: torch.Tensor) -> torch.Tensor:
    """A float strength as the op's ``[N]`` tensor (checked: a finite number); tensors pass."""
    if isinstance(alpha, torch.Tensor):
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SVFArgumentError(f"alpha must be a finite number or an [N] tensor, got {alpha!r}")
    return _row_tensor(float(alpha), hidden)


def _target_tensor(target: object, hidden: torch.Tensor) -> torch.Tensor | None:
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


_HIDDEN_DTYPES = (*STORAGE_DTYPES, torch.float64)  # float64: reference checks only
_PARAM_DTYPES = (torch.float32, torch.float64)


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
    B: torch.Tensor | None = None,
    target: float | torch.Tensor | None = None,
    band: float = 1.0,
) -> torch.Tensor:
    """Move each row of ``hidden`` ``[N, d]`` along the field, in place; return scores ``[N, C]``.

    ``B`` (the shape of ``A``): the direction's matrix, ``g_i = B_i.T @ (act'(z_i) * w2_i)``
    (None: ``A``, the gradient). ``target`` (a float or ``[N]``; NaN: no target for that row)
    with ``band > 0``: each row's strength is ``alpha`` times a gate that falls linearly to 0
    over the last ``band`` score units before the row's soft-minimum score reaches its target
    in the direction of ``alpha``. See :mod:`svf_kernels.reference` for the exact arithmetic.
    """
    alpha = _alpha_tensor(alpha, hidden)
    if target is not None:
        target = _target_tensor(target, hidden)
    check_field_args(hidden, A, c, w2, b2, alpha, tau, activation, eps, rows, B, target, band)
    return field_update_op(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), activation,
                           float(eps), rows, B, target, float(band))


def check_table_args(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    field_ids: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    activation: str,
    eps: float,
    B: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    band: float = 1.0,
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
    check_field_args(hidden, A[0], c[0], w2[0], b2[0], alpha, tau, activation, eps, None, None,
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
    for name, t in (("A", A), ("B", B), ("c", c), ("w2", w2), ("b2", b2)):
        if t is not None and not t.is_contiguous():
            raise SVFArgumentError(f"{name} of a field table must be contiguous")


def field_table_update_(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    field_ids: torch.Tensor,
    alpha: float | torch.Tensor,
    *,
    tau: float = 1.0,
    normalize: bool = True,
    activation: str = "gelu_tanh",
    eps: float = 1e-6,
    check_ids: bool = True,
    B: torch.Tensor | None = None,
    target: float | torch.Tensor | None = None,
    band: float = 1.0,
) -> torch.Tensor:
    """Move row ``r`` of ``hidden`` ``[N, d]`` by field ``field_ids[r]`` of a table, in place.

    ``A [F, C, m, d]``, ``c, w2 [F, C, m]``, ``b2 [F, C]``: F fields of C concepts each;
    ``field_ids [N]`` (int64/int32): ``-1`` leaves the row bit-identical (scores NaN).
    ``check_ids`` reads the ids to reject values outside ``[-1, F)`` (one device sync; pass
    False in a compiled or CUDA-graph region, where the kernels treat them as -1).
    ``B [F, C, m, d]``, ``target`` (float or ``[N]``, per row) and ``band`` as in
    :func:`field_update_`. See :func:`svf_kernels.reference.field_table_update_reference`.
    """
    alpha = _alpha_tensor(alpha, hidden)
    if target is not None:
        target = _target_tensor(target, hidden)
    check_table_args(hidden, A, c, w2, b2, field_ids, alpha, tau, activation, eps, B, target, band)
    if check_ids and field_ids.numel() and not torch.compiler.is_compiling():
        lo, hi = int(field_ids.min()), int(field_ids.max())
        if lo < -1 or hi >= A.shape[0]:
            raise SVFArgumentError(f"field_ids must lie in [-1, {A.shape[0]}), got values in [{lo}, {hi}]")
    return field_table_update_op(hidden, A, c, w2, b2, field_ids, alpha, float(tau), bool(normalize),
                                 activation, float(eps), B, target, float(band))
