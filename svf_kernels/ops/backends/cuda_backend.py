"""The ``cuda`` backend: hand-written CUDA C++ kernels (``csrc/cuda/``) on CUDA tensors.

Registered available when the compiled extension ``svf_kernels._C`` imports and was built with
CUDA (``_C.has_cuda()``); otherwise registered unavailable with the reason, so that
``SVF_BACKEND=cuda`` fails loudly instead of silently falling back.
"""

from __future__ import annotations

import torch

from ..dispatch import Backend, register_backend
from .compiled import _C, EXTENSION_ERROR, kernel_entry


def _why_unavailable() -> str:
    if _C is None:
        return f"the compiled extension svf_kernels._C did not import ({EXTENSION_ERROR})"
    if not (hasattr(_C, "has_cuda") and _C.has_cuda()):
        return "svf_kernels._C was built without CUDA (needs a CUDA torch and nvcc at build time)"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return ""


def available() -> bool:
    return _why_unavailable() == ""


field_update_cuda = kernel_entry(
    "cuda", lambda: _C.field_update_cuda if available() else None, _why_unavailable
)


def register() -> None:
    register_backend(
        Backend("cuda", ("cuda",), field_update_cuda, available, why_unavailable=_why_unavailable)
    )


register()
