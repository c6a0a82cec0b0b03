"""Compiled backends of ``field_update_``; importing this package registers them.

Each module registers its backend with :mod:`svf_kernels.dispatch` whether or not it can run
(an unavailable backend carries the reason, for ``SVF_BACKEND``). None of them fails to import
when the compiled extension ``svf_kernels._C`` is absent.
"""

from . import cpu, cuda

__all__ = ["cpu", "cuda"]
