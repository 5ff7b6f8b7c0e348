"""What the benchmarks share: statistics, the machine description, progress, projects."""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import textwrap
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import loky

#: Where a benchmark reports progress (stderr by default; tests pass a no-op).
Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def quiet(_: str) -> None:
    """A :data:`Progress` that says nothing."""


def median_ms(samples: Sequence[float]) -> float:
    return round(statistics.median(samples), 2) if samples else math.nan


def p90_ms(samples: Sequence[float]) -> float:
    """The 90th percentile (nearest rank): with few samples, the largest but one or so."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(0.9 * len(ordered)))
    return round(ordered[rank - 1], 2)


def machine() -> dict[str, Any]:
    """The machine a result came from: enough to judge whether two runs compare."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": loky.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "versions": {name: _version(name) for name in ("pivot-supervise", "loky", "trio")},
    }
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (Linux ``/proc``), or None where unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextmanager
def temporary_project(files: Mapping[str, str], prefix: str) -> Generator[Path]:
    """A throwaway project directory holding ``files`` (dedented), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=f"pivot-supervise-bench-{prefix}-")).resolve()
    try:
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def trivial_stages_source(count: int) -> str:
    """A pipeline of ``count`` independent no-op stages named ``s0000``, ``s0001``, ..."""
    lines = ["from pivot_supervise import stage", ""]
    for index in range(count):
        lines += ["", "@stage()", f"def s{index:04d}():", "    return None", ""]
    return "\n".join(lines)
