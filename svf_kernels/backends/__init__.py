"""Compiled backends of ``field_update_``; importing this package registers them.

Each module registers its backend with :mod:`svf_kernels.dispatch` whether or not it can run
(an unavailable backend carries the reason, for ``SVF_BACKEND``). None of them fails to import
when the compiled extension ``svf_kernels._C`` (or triton) is absent.

Precedence (later registration wins): ``cuda`` over ``triton`` on CUDA tensors, ``cpu`` over
the ``torch`` reference on CPU tensors; ``SVF_BACKEND`` picks any of them explicitly.
"""

from . import triton_backend  # noqa: I001 - import order is precedence order
from . import cpu, cuda

__all__ = ["cpu", "cuda", "triton_backend"]
