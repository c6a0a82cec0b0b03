"""The ops ``svf::field_update_`` and ``svf::field_table_update_``, registered with ``torch.library``,
and ``svf::residual_table_update_``, the table op on a decoder layer's ``(hidden, residual)`` pair.

The Python wrappers check arguments (:mod:`svf_kernels.ops.checks`), turn a float ``alpha`` (and
a float ``target``) into a per-row tensor, and call the registered op. The registered op has one
Python kernel that picks the backend at one dispatch point (:mod:`svf_kernels.ops.dispatch`), and
a shape-only fake implementation so ``torch.compile(fullgraph=True)`` traces through it. When the
extension is built, its C++ kernels take the op's CPU/CUDA calls first and hand back to the same
dispatch whatever they do not serve (``csrc/registration.cpp``).
"""

from __future__ import annotations

import torch

from ..errors import SVFArgumentError
from .checks import alpha_tensor, check_field_args, check_table_args, target_tensor
from .dispatch import select_backend

# The schemas of DESIGN.md §3. Defined with ``torch.library.Library`` (not ``custom_op``): the
# call path is the dispatcher plus one Python hop, ~5 µs; ``custom_op`` adds ~150 µs per call,
# more than the whole decode-time kernel.
SCHEMA = (
    "field_update_(Tensor(a!) hidden, Tensor A, Tensor c, Tensor w2, Tensor b2, Tensor alpha, "
    "float tau, bool normalize, float eps, Tensor? rows, Tensor? B, Tensor? target, float band) "
    "-> Tensor"
)
TABLE_SCHEMA = (
    "field_table_update_(Tensor(a!) hidden, Tensor A, Tensor c, Tensor w2, Tensor b2, "
    "Tensor field_ids, Tensor alpha, float tau, bool normalize, float eps, Tensor? B, "
    "Tensor? target, float band, Tensor? vectors=None) -> Tensor"
)
RESIDUAL_SCHEMA = (
    "residual_table_update_(Tensor(a!) hidden, Tensor(b!) residual, Tensor A, Tensor c, "
    "Tensor w2, Tensor b2, Tensor field_ids, Tensor alpha, Tensor live, float tau, bool normalize, "
    "float eps, Tensor? B, Tensor? targets, float band, Tensor? vectors) -> ()"
)
_LIB = torch.library.Library("svf", "DEF")


def _dispatch(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, B, target, band):
    """The op's one kernel for every device: hand over to the backend chosen for ``hidden``."""
    return select_backend(hidden.device, hidden.dtype).impl(
        hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, None, B, target, band)


def _table_dispatch(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize, eps, B, target, band,
                    vectors=None):
    """The table op's one kernel: the same backend choice, with ``field_ids``."""
    return select_backend(hidden.device, hidden.dtype).impl(
        hidden, A, c, w2, b2, alpha, tau, normalize, eps, None, field_ids, B, target, band,
        vectors)


def _field_update_fake(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows, B, target, band):
    """Shape-only implementation for torch.compile / FakeTensor: scores are float32 [N, C]."""
    return hidden.new_empty((hidden.shape[0], A.shape[0]), dtype=torch.float32)


def _field_table_update_fake(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize, eps, B,
                             target, band, vectors=None):
    """Shape-only implementation: scores are float32 [N, C] (``A`` is ``[F, C, m, d]``)."""
    return hidden.new_empty((hidden.shape[0], A.shape[1]), dtype=torch.float32)


# Each op, and its twin ``_<name>_python``: the compiled extension registers C++ kernels for the
# CPU (and CUDA) keys of the op (csrc/registration.cpp), so those calls skip the Python hop; what
# they do not serve (another SVF_BACKEND, float64) comes back to the Python dispatch through the
# twin.
for _name, _schema, _kernel, _fake in (
    ("field_update_", SCHEMA, _dispatch, _field_update_fake),
    ("field_table_update_", TABLE_SCHEMA, _table_dispatch, _field_table_update_fake),
):
    _LIB.define(_schema)
    _LIB.impl(_name, _kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"svf::{_name}", _fake, lib=_LIB)
    _twin = f"_{_name.rstrip('_')}_python"
    _LIB.define(_schema.replace(f"{_name}(", f"{_twin}(", 1))
    _LIB.impl(_twin, _kernel, "CompositeExplicitAutograd")

field_update_op = torch.ops.svf.field_update_.default
field_table_update_op = torch.ops.svf.field_table_update_.default


def signed_targets(target: torch.Tensor | float | None, alpha: torch.Tensor) -> torch.Tensor | None:
    """Per-row op targets from targets given on the side each row's strength pushes toward:
    ``target`` where ``alpha >= 0``, ``-target`` where ``alpha < 0`` (on the device)."""
    if target is None:
        return None
    return torch.where(alpha < 0, -target, target) if isinstance(target, torch.Tensor) else \
        torch.where(alpha < 0, -float(target), float(target)).float()


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _residual_table_update(hidden, residual, A, c, w2, b2, field_ids, alpha, live, tau, normalize,
                           eps, B, targets, band, vectors) -> None:
    """The residual op's kernel for every device (the compiled extension takes CPU calls in C++,
    ``csrc/registration.cpp``, with the same steps)."""
    # A step that steers no token here leaves the pair as it is (unless a CUDA graph is being
    # captured: its replays may steer).
    if not bool(live) and not _capturing(hidden):
        return
    n = hidden.shape[0]
    ids, a = field_ids[:n], alpha[:n]
    hidden.add_(residual)
    target = None if targets is None else \
        signed_targets(targets.index_select(0, ids.clamp(0, targets.shape[0] - 1)), a)
    field_table_update_op(hidden, A, c, w2, b2, ids, a, tau, normalize, eps, B, target, band,
                          vectors)
    residual.zero_()


_LIB.define(RESIDUAL_SCHEMA)
_LIB.impl("residual_table_update_", _residual_table_update, "CompositeExplicitAutograd")
torch.library.register_fake("svf::residual_table_update_", lambda *args: None, lib=_LIB)
residual_table_update_op = torch.ops.svf.residual_table_update_.default


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
    in the direction of ``alpha``. See :mod:`svf_kernels.ops.reference` for the exact arithmetic.
    """
    alpha = alpha_tensor(alpha, hidden)
    if target is not None:
        target = target_tensor(target, hidden)
    check_field_args(hidden, A, c, w2, b2, alpha, tau, eps, rows, B, target, band)
    return field_update_op(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), float(eps),
                           rows, B, target, float(band))


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
    eps: float = 1e-6,
    check_ids: bool = True,
    B: torch.Tensor | None = None,
    target: float | torch.Tensor | None = None,
    band: float = 1.0,
    vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move row ``r`` of ``hidden`` ``[N, d]`` by field ``field_ids[r]`` of a table, in place.

    ``A [F, C, m, d]``, ``c, w2 [F, C, m]``, ``b2 [F, C]``: F fields of C concepts each;
    ``field_ids [N]`` (int64/int32): ``-1`` leaves the row bit-identical (scores NaN).
    ``check_ids`` reads the ids to reject values outside ``[-1, F)`` (one device sync; pass
    False in a compiled or CUDA-graph region, where the kernels treat them as -1).
    ``B [F, C, m, d]``, ``target`` (float or ``[N]``, per row) and ``band`` as in
    :func:`field_update_`. ``vectors [F, d]`` (optional): each field's static vector; a row
    of field ``f`` moves by ``alpha * (dir + vectors[f])`` (gated as a whole). See
    :func:`svf_kernels.ops.reference.field_table_update_reference`.
    """
    alpha = alpha_tensor(alpha, hidden)
    if target is not None:
        target = target_tensor(target, hidden)
    check_table_args(hidden, A, c, w2, b2, field_ids, alpha, tau, eps, B, target, band, vectors)
    if check_ids and field_ids.numel() and not torch.compiler.is_compiling():
        lo, hi = int(field_ids.min()), int(field_ids.max())
        if lo < -1 or hi >= A.shape[0]:
            raise SVFArgumentError(f"field_ids must lie in [-1, {A.shape[0]}), got values in [{lo}, {hi}]")
    return field_table_update_op(hidden, A, c, w2, b2, field_ids, alpha, float(tau), bool(normalize),
                                 float(eps), B, target, float(band), vectors)
