"""The ``cuda`` backend: hand-written CUDA C++ kernels (``csrc/cuda/``) on CUDA tensors.

Registered available when the compiled extension ``svf_kernels._C`` imports and was built with
CUDA (``_C.has_cuda()``); otherwise registered unavailable with the reason, so that
``SVF_BACKEND=cuda`` fails loudly instead of silently falling back.
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
        return f"the compiled extension svf_kernels._C did not import ({_IMPORT_ERROR})"
    if not (hasattr(_C, "has_cuda") and _C.has_cuda()):
        return "svf_kernels._C was built without CUDA (needs a CUDA torch and nvcc at build time)"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return ""


def available() -> bool:
    return _why_unavailable() == ""


def field_update_cuda(
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
    """Same contract as :func:`svf_kernels.reference.field_update_reference` (CUDA tensors).

    float64 ``hidden`` (reference checks only) goes to the reference.
    """
    if activation != "gelu_tanh":
        raise ValueError(f"the cuda backend supports activation 'gelu_tanh', got {activation!r}")
    if hidden.dtype == torch.float64:  # reference checks only: the kernel stores fp32/bf16/fp16
        return field_update_reference(hidden, A, c, w2, b2, alpha, tau, normalize, activation,
                                      eps, rows)
    if _C is None:
        raise RuntimeError(_why_unavailable())
    return _C.field_update_cuda(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize),
                                float(eps), rows)


def register() -> None:
    register_backend(
        Backend("cuda", ("cuda",), field_update_cuda, available, why_unavailable=_why_unavailable())
    )


register()
