"""The ``cpu`` backend: the fused C++/OpenMP kernel (``csrc/cpu/``) on CPU tensors.

Registered available when the compiled extension ``svf_kernels._C`` imports; otherwise
registered unavailable with the reason, so that ``SVF_BACKEND=cpu`` fails loudly instead of
silently falling back. With the extension present it is the default for CPU tensors
(``SVF_BACKEND=torch`` selects the reference instead).
"""

from __future__ import annotations

from ..dispatch import Backend, register_backend
from .compiled import _C, EXTENSION_ERROR, kernel_entry


def _why_unavailable() -> str:
    if _C is None:
        return (
            "svf_kernels._C not built: reinstall with pip install --no-build-isolation -e . "
            f"({EXTENSION_ERROR})"
        )
    return ""


def available() -> bool:
    return _C is not None


field_update_cpu = kernel_entry("cpu", lambda: _C and _C.field_update_cpu, _why_unavailable)


def register() -> None:
    register_backend(
        Backend("cpu", ("cpu",), field_update_cpu, available, why_unavailable=_why_unavailable)
    )


register()
