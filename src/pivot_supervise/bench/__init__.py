"""Benchmarks of what the product promises: restart cost, edit-to-result, dispatch.

Importable so that the ``pivot-supervise bench`` command, the scripts in the repository's
``benchmarks/`` directory and the test suite all run the same measuring code:

- :func:`measure_restart` (:mod:`.restart`): restart latency against stage count for the
  ``naive`` (plain loky), ``cold`` and ``standby`` strategies.
- :func:`measure_edit` (:mod:`.edit`): from saving a stage's code to its new result,
  through a real supervisor, with a breakdown.
- :func:`measure_dispatch` (:mod:`.dispatch`): N trivial stages through the supervisor
  against plain loky ``executor.map``.

Each returns a JSON-ready dict and reports progress through a callable (stderr in the
CLI).  Timings are for people to read; the test suite checks only correctness.
"""

from ._common import machine, stderr_progress
from ._plot import INSTALL_HINT, PlotUnavailable, plot_available, plot_restart
from .dispatch import measure_dispatch
from .edit import measure_edit
from .restart import STRATEGIES, measure_restart

__all__ = [
    "INSTALL_HINT",
    "STRATEGIES",
    "PlotUnavailable",
    "machine",
    "measure_dispatch",
    "measure_edit",
    "measure_restart",
    "plot_available",
    "plot_restart",
    "stderr_progress",
]
