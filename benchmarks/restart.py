"""Benchmark: restart latency against stage count (naive / cold / standby).

Same options as ``pivot-supervise bench restart``; run ``python -m benchmarks.restart --help``.
The measuring function is :func:`pivot_supervise.bench.measure_restart`.
"""

from __future__ import annotations

import sys

from pivot_supervise.bench import measure_restart as measure
from pivot_supervise.cli import main

__all__ = ["measure"]

if __name__ == "__main__":
    sys.exit(main(["bench", "restart", *sys.argv[1:]]))
