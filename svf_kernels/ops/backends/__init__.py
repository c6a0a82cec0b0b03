"""Every backend of ``field_update_`` / ``field_table_update_``, one module each.

Importing this package registers them with :mod:`svf_kernels.ops.dispatch`, in precedence order
(later registration wins for a device): ``torch_backend`` (the plain-torch reference, every
device, the fallback), ``triton_backend`` (CUDA), ``cpu_backend`` (C++/OpenMP),
``cuda_backend`` (CUDA C++). A backend that cannot run here registers unavailable with the
reason, so that ``SVF_BACKEND`` fails loudly; none of them fails to import without the
compiled extension ``svf_kernels._C`` or triton.
"""

from . import torch_backend  # noqa: I001 - import order is precedence order
from . import triton_backend
from . import cpu_backend, cuda_backend

__all__ = ["cpu_backend", "cuda_backend", "torch_backend", "triton_backend"]
