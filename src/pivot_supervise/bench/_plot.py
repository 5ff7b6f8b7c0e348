"""``--plot``: restart latency against stage count, one line per strategy (matplotlib)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'pivot-supervise[plot]'"


class PlotUnavailable(Exception):
    """matplotlib is not installed."""


def plot_available() -> bool:
    """True when matplotlib can be imported (checked before a long benchmark starts)."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def plot_restart(result: dict[str, Any], path: Path) -> None:
    """Write a PNG of ``median_ms`` (log scale) against stage count for each strategy."""
    try:
        # Imported by name and used as ``Any``: an optional extra, whose (partial) type
        # information must not decide whether the package type-checks.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise PlotUnavailable(
            f"--plot needs matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    rows: list[dict[str, Any]] = result["rows"]
    figure, axes = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for strategy in dict.fromkeys(row["strategy"] for row in rows):
        mine = [row for row in rows if row["strategy"] == strategy]
        axes.plot(
            [row["stage_count"] for row in mine],
            [row["median_ms"] for row in mine],
            marker="o",
            label=strategy,
        )
    cpus = result.get("machine", {}).get("usable_cpus", "?")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("stages (pool = min(stages, max workers))")
    axes.set_ylabel("restart to first result, median ms")
    axes.set_title(f"pivot-supervise restart latency ({cpus} CPUs)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
