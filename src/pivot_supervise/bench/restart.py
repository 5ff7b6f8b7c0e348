"""``bench restart``: what a code reload costs, against the number of stages.

For each stage count the pool is ``min(stages, max_workers)`` workers, and three
strategies restart it ``repeat`` times:

- ``naive``: the loky way: ``shutdown(kill_workers=True)`` of the old executor, a new
  executor, one task per worker.
- ``cold``: ours without a standby: :class:`LokyBackend` spawns the new generation,
  validates the pipeline in its first worker and promotes it while the others load the
  validated source (what the supervisor does on a code change).
- ``standby``: ours: the generation is taken from the standby, whose workers were
  started ahead.  Before each repeat we wait for the standby to be ready again, and
  report how long that refill took (``refill_median_ms``).

Two latencies from the restart request: ``median_ms``/``p90_ms`` until the new
generation is active (for ours: the pipeline validated in one worker) and has answered a
first no-op (one no-op task; for ours, a no-op *stage* through the normal dispatch), and
``all_ready_median_ms`` until every one of its workers answered a no-op (no-ops meeting
at a barrier, so each worker answers one).  For ``naive`` those are the "one task per
worker" of its restart, sent with its first no-op.  Ours sends its own tasks (a load
per worker, or a standby's park tasks) and its first no-op alone: the barrier no-ops go
out once that answered, as a real restart's first stages are not raced by a health
check of every worker; so its second latency includes the first.  Every row also
checks that each restart gave processes never seen before (``fresh_pids``).
"""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import loky
import trio
from loky.backend.context import get_context

from .._config import load_config
from ..supervisor._core import GenerationLoaded
from ..supervisor.backends import LokyBackend
from ..workers._messages import RunRequest, WarmReply, WarmRequest
from ..workers._tasks import ping, warm_up
from ._common import (
    Progress,
    machine,
    median_ms,
    p90_ms,
    quiet,
    rss_mb,
    temporary_project,
    trivial_stages_source,
)

STRATEGIES = ("naive", "cold", "standby")
DEFAULT_STAGES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MAX_WORKERS = 16
DEFAULT_REPEAT = 5
#: Upper bound on any single wait (a restart, a refill): a hung pool fails the bench.
WAIT_S = 120.0


def measure_restart(
    stage_counts: Sequence[int] = DEFAULT_STAGES,
    *,
    max_workers: int = DEFAULT_MAX_WORKERS,
    repeat: int = DEFAULT_REPEAT,
    strategies: Sequence[str] = STRATEGIES,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Run the restart benchmark; returns ``{"machine": {...}, "rows": [...]}``."""
    rows: list[dict[str, Any]] = []
    for stages in stage_counts:
        workers = max(1, min(stages, max_workers))
        source = trivial_stages_source(stages)
        with temporary_project({"pipeline.py": source}, prefix="restart") as root:
            for strategy in strategies:
                progress(f"restart: {strategy}, {stages} stages, {workers} workers, x{repeat}")
                if strategy == "naive":
                    row = _naive(workers, repeat, root)
                else:
                    row = trio.run(_ours, root, workers, repeat, strategy == "standby")
                rows.append(
                    {"strategy": strategy, "stage_count": stages, "workers": workers, **row}
                )
    return {"machine": machine(), "rows": rows}


# ------------------------------------------------------------------------- naive


def _naive(workers: int, repeat: int, root: Path) -> dict[str, Any]:
    first: list[float] = []
    every: list[float] = []
    seen: set[int] = set()
    fresh = True
    old = loky.ProcessPoolExecutor(max_workers=workers, context=get_context("loky"))
    try:
        seen |= _ping_each(old, workers, root)
        for _ in range(repeat):
            barrier = Path(tempfile.mkdtemp(prefix="pivot-supervise-bench-naive-"))
            request = WarmRequest(str(root), str(barrier), workers)
            started = time.perf_counter()
            old.shutdown(wait=False, kill_workers=True)
            new = loky.ProcessPoolExecutor(max_workers=workers, context=get_context("loky"))
            old = new
            # The loky way to restart is a new executor and one task per worker: those
            # tasks are part of the restart, so they go out with the first no-op.
            one = new.submit(ping)
            each = [new.submit(warm_up, request) for _ in range(workers)]
            one.result(timeout=WAIT_S)
            first.append((time.perf_counter() - started) * 1000)
            pids = {future.result(timeout=WAIT_S).pid for future in each}
            every.append((time.perf_counter() - started) * 1000)
            shutil.rmtree(barrier, ignore_errors=True)
            fresh = fresh and len(pids) == workers and not pids & seen
            seen |= pids
    finally:
        old.shutdown(wait=False, kill_workers=True)
    return _row(first, every, fresh)


def _ping_each(executor: loky.ProcessPoolExecutor, workers: int, root: Path) -> set[int]:
    barrier = Path(tempfile.mkdtemp(prefix="pivot-supervise-bench-naive-"))
    try:
        request = WarmRequest(str(root), str(barrier), workers)
        futures: list[concurrent.futures.Future[WarmReply]] = [
            executor.submit(warm_up, request) for _ in range(workers)
        ]
        return {future.result(timeout=WAIT_S).pid for future in futures}
    finally:
        shutil.rmtree(barrier, ignore_errors=True)


# -------------------------------------------------------------------------- ours


async def _ours(root: Path, workers: int, repeat: int, standby: bool) -> dict[str, Any]:
    backend = LokyBackend(load_config(root), standby=standby, max_workers=workers)
    first: list[float] = []
    every: list[float] = []
    loaded_ms: list[float] = []
    refill: list[float] = []
    standby_rss: list[float] = []
    seen: set[int] = set()
    fresh = True
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            with trio.fail_after(WAIT_S):
                generation = 1
                result = await backend.load(generation, workers)
                if not isinstance(result, GenerationLoaded):
                    raise RuntimeError(f"the benchmark pipeline did not load: {result.error}")
                seen |= set(result.workers)
            for _ in range(repeat):
                with trio.fail_after(WAIT_S):
                    if standby:
                        ready = await backend.wait_standby()
                        refill.append(ready.fill_ms)
                        standby_rss += [m for m in map(rss_mb, ready.pids) if m is not None]
                    started = time.perf_counter()
                    result = await backend.load(generation + 1, workers)
                    loaded = time.perf_counter()
                    if not isinstance(result, GenerationLoaded):
                        raise RuntimeError(f"restart failed: {result.error}")
                    times = await _first_and_every(backend, generation + 1)
                    first.append((times[0] - started) * 1000)
                    every.append((times[1] - started) * 1000)
                    loaded_ms.append((loaded - started) * 1000)
                    pids = set(result.workers)
                    fresh = fresh and len(pids) == workers and not pids & seen
                    seen |= pids
                    await backend.retire(generation)
                    generation += 1
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await backend.aclose()
    row = _row(first, every, fresh)
    row["loaded_median_ms"] = median_ms(loaded_ms)
    if standby:
        row["refill_median_ms"] = median_ms(refill)
        row["standby_worker_rss_mb"] = median_ms(standby_rss)
    return row


async def _first_and_every(backend: LokyBackend, generation: int) -> tuple[float, float]:
    """When a first no-op stage came back, and then when every worker had answered a
    no-op."""
    outcome = (await backend.run(RunRequest(generation, "s0000"))).outcome
    if outcome.status != "ok":
        raise RuntimeError(f"the no-op stage failed: {outcome.error}")
    first = time.perf_counter()
    await backend.ping_each(generation)
    return first, time.perf_counter()


def _row(first: list[float], every: list[float], fresh: bool) -> dict[str, Any]:
    return {
        "median_ms": median_ms(first),
        "p90_ms": p90_ms(first),
        "all_ready_median_ms": median_ms(every),
        "repeats": len(first),
        "fresh_pids": fresh,
    }


def format_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table, with each strategy's ratio to naive."""
    naive = {
        row["stage_count"]: row["median_ms"] for row in result["rows"] if row["strategy"] == "naive"
    }
    lines = [
        "| stages | workers | strategy | median ms | p90 ms | all ready ms | vs naive "
        "| refill ms |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        base = naive.get(row["stage_count"])
        ratio = f"{row['median_ms'] / base:.3f}" if base else "-"
        refill = row.get("refill_median_ms")
        lines.append(
            f"| {row['stage_count']} | {row['workers']} | {row['strategy']} "
            f"| {row['median_ms']:.1f} | {row['p90_ms']:.1f} | {row['all_ready_median_ms']:.1f} "
            f"| {ratio} | {'-' if refill is None else f'{refill:.0f}'} |"
        )
    return "\n".join(lines)
