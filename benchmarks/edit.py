"""Benchmark: edit-to-result latency through a real supervisor.

Same options as ``pivot-supervise bench edit``; run ``python -m benchmarks.edit --help``.
The measuring function is :func:`pivot_supervise.bench.measure_edit`.
"""

from __future__ import annotations

import sys

from pivot_supervise.bench import measure_edit as measure
from pivot_supervise.cli import main

__all__ = ["measure"]

if __name__ == "__main__":
    sys.exit(main(["bench", "edit", *sys.argv[1:]]))
