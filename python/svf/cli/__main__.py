"""``python -m svf.cli``: the same as the ``svf`` command."""

from .commands import main

raise SystemExit(main())
