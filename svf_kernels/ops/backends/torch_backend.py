"""The ``torch`` backend: the plain-torch reference (:mod:`svf_kernels.ops.reference`), everywhere.

It serves every device type and is the fallback when no compiled kernel can run; it also takes
every float64 call (reference checks) whatever ``SVF_BACKEND`` says.
"""

from __future__ import annotations

import torch

from ...errors import SVFArgumentError
from ..dispatch import REFERENCE, Backend, register_backend
from ..reference import field_table_update_reference, field_update_reference


def field_update_torch(hidden, A, c, w2, b2, alpha, tau=1.0, normalize=True, eps=1e-6, rows=None,
                       field_ids=None, B=None, target=None, band=1.0, vectors=None) -> torch.Tensor:
    """One field (``A [C, m, d]``) or a table (``field_ids``), computed by the reference.

    The reference computes in float64 whatever it is given, so the hot path's one cheap check
    that the compiled kernels make themselves is made here: ``hidden`` is floating point.
    """
    if not hidden.is_floating_point():
        raise SVFArgumentError(f"hidden dtype must be float32, bfloat16 or float16, got {hidden.dtype}")
    if field_ids is None:
        return field_update_reference(hidden, A, c, w2, b2, alpha, tau, normalize, eps,
                                      rows, B, target, band)
    return field_table_update_reference(hidden, A, c, w2, b2, field_ids, alpha, tau, normalize,
                                        eps, B, target, band, vectors)


register_backend(
    Backend(REFERENCE, ("cpu", "cuda", "mps", "xpu", "meta"), field_update_torch, lambda: True)
)
