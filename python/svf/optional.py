"""Optional packages: import one, or fail with the ``pip install`` that brings it.

The core install (``pip install svf-kernels``: train, steer, generate, ``svf train``)
needs none of them.  The judges, the report plots, ``svf demo`` and ``svf eval`` need the
``eval`` extra; :func:`require` is the one place that turns its absence into a clear error.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtraError", "require"]

#: What each extra is for, for the error message.
EXTRAS = {"eval": "the judges, the report plots, `svf demo` and `svf eval`"}


class MissingExtraError(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (a dotted name) and return it; when it is not installed, raise
    :class:`MissingExtraError` whose message is ``pip install 'svf-kernels[<extra>]'``.

    Only the absence of ``module`` or of a package above it is translated: an import
    error raised from inside an installed package propagates unchanged, so a broken
    install is not mistaken for a missing extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not missing or not (module == missing or module.startswith(f"{missing}.")):
            raise
        package = module.partition(".")[0]  # what is installed (or not) as a whole
        purpose = EXTRAS.get(extra, f"the {extra!r} features")
        raise MissingExtraError(
            f"{package} is not installed; {purpose} need the {extra!r} extra: "
            f"pip install 'svf-kernels[{extra}]'",
            name=package,
        ) from exc
