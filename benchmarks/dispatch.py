"""Benchmark: supervisor dispatch against plain loky executor.map.

Same options as ``pivot-supervise bench dispatch``; run ``python -m benchmarks.dispatch --help``.
The measuring function is :func:`pivot_supervise.bench.measure_dispatch`.
"""

from __future__ import annotations

import sys

from pivot_supervise.bench import measure_dispatch as measure
from pivot_supervise.cli import main

__all__ = ["measure"]

if __name__ == "__main__":
    sys.exit(main(["bench", "dispatch", *sys.argv[1:]]))
