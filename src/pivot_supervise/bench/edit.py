"""``bench edit``: from saving a stage's code to that stage's new result.

A real :class:`Supervisor` watches a temporary project with one trivial stage.  The
stage's source is rewritten ``edits`` times (same size each time, so a stale ``.pyc``
would go unnoticed by its header); each time we measure from the write to the
``stage_finished`` event whose output shows the new version.  The breakdown comes from
the moments the events reached us (a monotonic clock in the same process):

- ``detect``: write -> ``files_changed`` (the watcher's debounce and classification),
- ``load_promote``: ``files_changed`` -> ``generation_ready`` (new workers loaded the
  pipeline and were promoted),
- ``dispatch``: ``generation_ready`` -> ``stage_started``,
- ``run``: ``stage_started`` -> ``stage_finished`` (the stage, and its result's trip back).

Before each edit we wait until the previous run finished and, with a standby, until the
next standby is ready: the measured case is "an edit after a pause", as when a person
edits code.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import trio

from .._config import load_config
from ..supervisor._bus import Subscription
from ..supervisor._core import RunOptions
from ..supervisor._events import Event
from ..supervisor._supervisor import Supervisor
from ..supervisor.backends import LokyBackend
from ._common import Progress, machine, median_ms, p90_ms, quiet, temporary_project

DEFAULT_EDITS = 20
DEFAULT_DEBOUNCE_MS = 50
WAIT_S = 60.0
PHASES = ("detect", "load_promote", "dispatch", "run")

_PIPELINE = """\
from pathlib import Path

from pivot_supervise import stage

VERSION = "v{version:05d}"


@stage(outs=["out.txt"])
def trivial():
    print(VERSION)
    Path("out.txt").write_text(VERSION)
"""


def pipeline_source(version: int) -> str:
    """The stage's source at ``version``: always the same length."""
    return _PIPELINE.format(version=version)


def measure_edit(
    edits: int = DEFAULT_EDITS,
    *,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    standby: bool = True,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Run the edit benchmark; returns the JSON document of ``bench edit --json``."""
    with temporary_project({"pipeline.py": pipeline_source(0)}, prefix="edit") as root:
        samples = trio.run(_edits, root, edits, debounce_ms, standby, progress)
    total = [s["total_ms"] for s in samples]
    return {
        "machine": machine(),
        "edits": len(samples),
        "debounce_ms": debounce_ms,
        "standby": standby,
        "median_ms": median_ms(total),
        "p90_ms": p90_ms(total),
        "breakdown_median_ms": {p: median_ms([s[p] for s in samples]) for p in PHASES},
        "new_version_seen": all(s["version_seen"] for s in samples),
        "fresh_pids": _fresh(samples),
        "samples": samples,
    }


def _fresh(samples: list[dict[str, Any]]) -> bool:
    seen: set[int] = set()
    for sample in samples:
        pids = set(sample["workers"])
        if not pids or pids & seen:
            return False
        seen |= pids
    return True


class _Clocked:
    """Every event of a subscription with the monotonic time it reached us."""

    def __init__(self, subscription: Subscription) -> None:
        self._events = subscription.events
        self.seen: list[tuple[float, Event]] = []
        self._arrived = trio.Event()

    async def pump(self) -> None:
        async for event in self._events:
            self.seen.append((time.perf_counter(), event))
            self._arrived.set()
            self._arrived = trio.Event()

    async def wait_for(self, start: int, name: str, **fields: Any) -> tuple[int, float, Event]:
        """The first ``name`` event (with ``fields``) at index ``start`` or later."""
        index = start
        while True:
            while index < len(self.seen):
                at, event = self.seen[index]
                if event.name == name and all(event.get(k) == v for k, v in fields.items()):
                    return index, at, event
                index += 1
            await self._arrived.wait()


async def _edits(
    root: Path, edits: int, debounce_ms: int, standby: bool, progress: Progress
) -> list[dict[str, Any]]:
    config = load_config(root).with_overrides(debounce_ms=debounce_ms)
    options = RunOptions(parallel=True, max_workers=1)
    supervisor = Supervisor(config, options, watch=True, handle_signals=False, standby=standby)
    clocked = _Clocked(supervisor.bus.subscribe())
    samples: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clocked.pump)
        nursery.start_soon(supervisor.run)
        try:
            with trio.fail_after(WAIT_S):
                await clocked.wait_for(0, "run_finished")
            for version in range(1, edits + 1):
                with trio.fail_after(WAIT_S):
                    samples.append(await _one_edit(supervisor, clocked, root, version, standby))
                if version % 5 == 0 or version == edits:
                    progress(f"edit: {version}/{edits}, last {samples[-1]['total_ms']:.1f} ms")
        finally:
            supervisor.stop()
    return samples


async def _one_edit(
    supervisor: Supervisor, clocked: _Clocked, root: Path, version: int, standby: bool
) -> dict[str, Any]:
    backend = supervisor.backend
    if standby and isinstance(backend, LokyBackend):
        await backend.wait_standby()
    mark = len(clocked.seen)
    text = pipeline_source(version)
    written = time.perf_counter()
    (root / "pipeline.py").write_text(text, encoding="utf-8")
    expected = f"v{version:05d}"
    index, detected, _ = await clocked.wait_for(mark, "files_changed", kind="code")
    index, ready_at, ready = await clocked.wait_for(index, "generation_ready")
    index, started, _ = await clocked.wait_for(index, "stage_started", stage="trivial")
    while True:
        index, finished, event = await clocked.wait_for(index, "stage_finished", stage="trivial")
        if expected in str(event.get("output", "")) or event.get("status") != "cancelled":
            break
        index += 1
    await clocked.wait_for(index, "run_finished")
    seen = event.get("status") == "ok" and expected in str(event.get("output", ""))
    return {
        "version": expected,
        "total_ms": _ms(finished - written),
        "detect": _ms(detected - written),
        "load_promote": _ms(ready_at - detected),
        "dispatch": _ms(started - ready_at),
        "run": _ms(finished - started),
        "generation": ready.get("generation"),
        "workers": list(ready.get("workers", [])),
        "version_seen": seen,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2) if math.isfinite(seconds) else math.nan


def format_summary(result: dict[str, Any]) -> str:
    b = result["breakdown_median_ms"]
    return "\n".join(
        [
            f"edit to result ({result['edits']} edits, debounce {result['debounce_ms']} ms, "
            f"standby {'on' if result['standby'] else 'off'}): "
            f"median {result['median_ms']:.1f} ms, p90 {result['p90_ms']:.1f} ms",
            f"  detect {b['detect']:.1f} ms, load+promote {b['load_promote']:.1f} ms, "
            f"dispatch {b['dispatch']:.1f} ms, run {b['run']:.1f} ms",
            f"  new version seen every time: {result['new_version_seen']}; "
            f"new worker pids every time: {result['fresh_pids']}",
        ]
    )
