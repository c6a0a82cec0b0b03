"""Progress bars that show on a terminal and stay out of logs.

Every long loop of the library takes its bar from :func:`progress_bar`: on stderr, shown only
when stderr is a terminal (tqdm's ``disable=None``), so a pipe or a CI log gets no
carriage-return frames; ``enabled=False`` (``--no-progress``) hides it everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, desc: str | None = None,
                 enabled: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` on stderr; ``enabled`` None: only when stderr is a TTY,
    False: never, True: always."""
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, file=sys.stderr,
                disable=None if enabled is None else not enabled, **kwargs)
