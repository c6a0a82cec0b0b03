"""``svf_kernels.field_update_``: the public op, registered with ``torch.library``.

The Python wrapper checks arguments (shapes, dtypes, devices; host-side, shape-only so it
traces under ``torch.compile``), turns a float ``alpha`` into a per-row tensor, and calls
``torch.ops.svf.field_update_``. The registered op has one Python kernel that picks the
backend at one dispatch point (:mod:`svf_kernels.dispatch`), and a shape-only fake
implementation so ``torch.compile(fullgraph=True)`` traces through it. When the extension is
built, its C++ kernels take the op's CPU/CUDA calls first and hand back to the same dispatch
whatever they do not serve.
"""

from __future__ import annotations

import torch

from .dispatch import select_backend
from .errors import SVFArgumentError
from .reference import ACTIVATIONS, STORAGE_DTYPES

# The schema of DESIGN.md §3. Defined with ``torch.library.Library`` (not ``custom_op``): the
# call path is the dispatcher plus one Python hop, ~5 µs; ``custom_op`` adds ~150 µs per call,
# more than the whole decode-time kernel.
SCHEMA = (
    "field_update_(Tensor(a!) hidden, Tensor A, Tensor c, Tensor w2, Tensor b2, Tensor alpha, "
    "float tau, bool normalize, str activation, float eps, Tensor? rows) -> Tensor"
)
_LIB = torch.library.Library("svf", "DEF")
_LIB.define(SCHEMA)


def _dispatch(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows):
    """The op's one kernel for every device: hand over to the backend chosen for ``hidden``."""
    return select_backend(hidden.device).impl(hidden, A, c, w2, b2, alpha, tau, normalize,
                                              activation, eps, rows)


_LIB.impl("field_update_", _dispatch, "CompositeExplicitAutograd")
# The compiled extension also registers C++ kernels for the CPU (and CUDA) keys of
# ``field_update_`` (csrc/registration.cpp): those calls skip the Python hop. What they do not
# serve (another SVF_BACKEND, float64, another activation) comes back here through this twin.
_LIB.define(SCHEMA.replace("field_update_(", "_field_update_python(", 1))
_LIB.impl("_field_update_python", _dispatch, "CompositeExplicitAutograd")


@torch.library.register_fake("svf::field_update_", lib=_LIB)
def _field_update_fake(hidden, A, c, w2, b2, alpha, tau, normalize, activation, eps, rows):
    """Shape-only implementation for torch.compile / FakeTensor: scores are float32 [N, C]."""
    return hidden.new_empty((hidden.shape[0], A.shape[0]), dtype=torch.float32)


field_update_op = torch.ops.svf.field_update_.default


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
    if not tau > 0:
        raise SVFArgumentError(f"tau must be > 0, got {tau}")
    if not eps > 0:
        raise SVFArgumentError(f"eps must be > 0, got {eps}")
    if activation not in ACTIVATIONS:
        raise SVFArgumentError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool:
            raise SVFArgumentError(f"rows must be a bool mask, got {getattr(rows, 'dtype', type(rows))}")
        if rows.shape != (n,):
            raise SVFArgumentError(f"rows must have shape ({n},), got {tuple(rows.shape)}")
        if rows.device != device:
            raise SVFArgumentError(f"rows is on {rows.device} but hidden is on {device}")


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
) -> torch.Tensor:
    """Move each row of ``hidden`` ``[N, d]`` along the field, in place; return scores ``[N, C]``.

    See :mod:`svf_kernels.reference` for the exact arithmetic.
    """
    if not isinstance(alpha, torch.Tensor):
        dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        alpha = torch.full((hidden.shape[0],), float(alpha), dtype=dt, device=hidden.device)
    check_field_args(hidden, A, c, w2, b2, alpha, tau, activation, eps, rows)
    return field_update_op(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), activation, float(eps), rows)
