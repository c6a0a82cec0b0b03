"""The ``svf`` command line (``svf train | generate | demo | eval | prepare | export``).

Depends on the core library and, for ``demo`` and ``eval``, on :mod:`svf.eval`; nothing in the
core imports it.
"""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
