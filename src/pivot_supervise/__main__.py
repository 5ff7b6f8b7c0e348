"""``python -m pivot_supervise`` is ``pivot-supervise``."""

from .cli import main

raise SystemExit(main())
