"""The ``cpu`` backend: the fused C++/OpenMP kernel (``csrc/cpu/``) on CPU tensors.

Registered available when the compiled extension ``svf_kernels._C`` imports; otherwise
registered unavailable with the reason, so that ``SVF_BACKEND=cpu`` fails loudly instead of
silently falling back. With the extension present it is the default for CPU tensors
(``SVF_BACKEND=torch`` selects the reference instead). float64 inputs (reference checks only)
go to the torch reference.
"""

from __future__ import annotations

import torch

from ..dispatch import Backend, register_backend
from ..reference import field_update_reference

try:
    from .. import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001 - any failure to load the extension means "unavailable"
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def _why_unavailable() -> str:
    if _C is None:
        return (
            "svf_kernels._C not built: reinstall with pip install --no-build-isolation -e . "
            f"({_IMPORT_ERROR})"
        )
    return ""


def available() -> bool:
    return _C is not None


def field_update_cpu(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: torch.Tensor,
    tau: float = 1.0,
    normalize: bool = True,
    activation: str = "gelu_tanh",
    eps: float = 1e-6,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`svf_kernels.reference.field_update_reference` (CPU tensors)."""
    if activation != "gelu_tanh":
        raise ValueError(f"the cpu backend supports activation 'gelu_tanh', got {activation!r}")
    if hidden.dtype == torch.float64:  # reference checks only: the kernel stores fp32/bf16/fp16
        return field_update_reference(hidden, A, c, w2, b2, alpha, tau, normalize, activation,
                                      eps, rows)
    if _C is None:
        raise RuntimeError(_why_unavailable())
    return _C.field_update_cpu(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize),
                               float(eps), rows)


def register() -> None:
    register_backend(
        Backend("cpu", ("cpu",), field_update_cpu, available, why_unavailable=_why_unavailable())
    )


register()
