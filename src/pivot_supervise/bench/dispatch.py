"""``bench dispatch``: the supervisor's cost per stage, against plain loky.

``stages`` trivial independent stages run through a real :class:`Supervisor`: the
median time from ``run_started`` to ``run_finished`` of ``repeat`` forced runs on the
warm generation, after a first run (``first_run_ms``, which also overlaps the other
workers' background load of the pipeline).  The baseline is plain loky with as many
workers (warmed up, the pipeline imported in each), mapping the very same stage
functions, ``list(executor.map(call, functions))``, the median of ``repeat`` times.
Medians, because one run of a few tens of milliseconds moves by a third on a busy
machine, either way.  The ratio is what the supervisor adds: the sans-IO core's
bookkeeping, one event per start and finish, capturing each stage's output, the trips
of quick stages.  Another supervised session adds the incremental machinery (an
up-to-date check before each stage, its record and history line after), reported as
``incremental_ms``.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loky
import trio
from loky.backend.context import get_context

from .._config import load_config
from .._state_dir import STATE_DIR
from ..pipeline._registry import REGISTRY
from ..supervisor._core import RunOptions, RunRequested
from ..supervisor._supervisor import Supervisor
from ..workers._messages import WarmRequest
from ..workers._tasks import warm_up
from ._common import Progress, machine, quiet, temporary_project, trivial_stages_source

DEFAULT_STAGES = 500
DEFAULT_REPEAT = 5
WAIT_S = 300.0
#: The pipeline module's name: unusual, so that importing it here clashes with nothing.
MODULE = "pivot_supervise_bench_dispatch_stages"


def call(function: Callable[[], object]) -> object:
    """What the baseline maps: call one stage function (pickled by reference)."""
    return function()


def measure_dispatch(
    stages: int = DEFAULT_STAGES,
    *,
    repeat: int = DEFAULT_REPEAT,
    max_workers: int | None = None,
    progress: Progress = quiet,
) -> dict[str, Any]:
    """Run the dispatch benchmark; returns the JSON document of ``bench dispatch --json``."""
    files = {
        f"{MODULE}.py": trivial_stages_source(stages),
        "pivot-supervise.toml": f'pipeline = "{MODULE}.py"\n',
    }
    with temporary_project(files, prefix="dispatch") as root:
        progress(f"dispatch: {stages} stages through the supervisor")
        supervised = trio.run(_supervised, root, max_workers, False, repeat)
        progress(f"dispatch: {stages} stages through the supervisor, with up-to-date checks")
        checked = trio.run(_supervised, root, max_workers, True, repeat)
        workers = supervised["workers"]
        progress(f"dispatch: {stages} stages through plain loky on {workers} workers")
        plain_ms = _plain(root, stages, workers, repeat)
    ratio = supervised["ms"] / plain_ms if plain_ms > 0 else float("nan")
    return {
        "machine": machine(),
        "stages": stages,
        "workers": workers,
        "repeats": repeat,
        "supervisor_ms": round(supervised["ms"], 2),
        "first_run_ms": round(supervised["first_run_ms"], 2),
        "loky_ms": round(plain_ms, 2),
        "ratio": round(ratio, 3),
        "incremental_ms": round(checked["ms"], 2),
        "incremental_ratio": round(checked["ms"] / plain_ms, 3) if plain_ms > 0 else None,
        "ok": supervised["ok"],
        "failed": supervised["failed"],
    }


async def _supervised(
    root: Path, max_workers: int | None, incremental: bool, repeat: int
) -> dict[str, Any]:
    """``1 + repeat`` runs of every stage in one session; the median of the forced runs
    on the warm generation is the one measured (``ms``), as the baseline is measured on
    warmed-up workers.

    The first run (``first_run_ms``) also pays for the generation's other workers
    importing the pipeline in the background right after its promotion.  With
    ``incremental``, each stage is checked against the state store (emptied first) before
    it starts and recorded after; the other runs are forced, so every stage runs again.
    """
    shutil.rmtree(root / STATE_DIR, ignore_errors=True)
    options = RunOptions(parallel=True, max_workers=max_workers)
    supervisor = Supervisor(
        load_config(root),
        options,
        watch=True,
        handle_signals=False,
        standby=False,
        incremental=incremental,
    )
    events = supervisor.bus.subscribe().events
    found: dict[str, Any] = {}
    runs: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        with trio.fail_after(WAIT_S):
            started = 0.0
            async for event in events:
                if event.name == "generation_ready":
                    found["workers"] = len(event.get("workers", []))
                elif event.name == "run_started":
                    started = time.perf_counter()
                elif event.name == "run_finished":
                    runs.append((time.perf_counter() - started) * 1000)
                    found["ok"] = event.get("ok")
                    found["failed"] = event.get("failed")
                    if len(runs) <= repeat:
                        supervisor.send(RunRequested(force=True, trigger="bench"))
                    else:
                        supervisor.stop()
    if len(runs) != 1 + repeat:
        raise RuntimeError("the supervisor stopped before its runs finished")
    found["first_run_ms"] = runs[0]
    found["ms"] = statistics.median(runs[1:])
    return found


def _plain(root: Path, stages: int, workers: int, repeat: int) -> float:
    functions = _import_stages(root, stages)
    executor = loky.ProcessPoolExecutor(max_workers=workers, context=get_context("loky"))
    barrier = Path(tempfile.mkdtemp(prefix="pivot-supervise-bench-dispatch-"))
    try:
        # Warm up: every worker started and has imported the stages' module.
        request = WarmRequest(str(root), str(barrier), workers)
        for future in [executor.submit(warm_up, request) for _ in range(workers)]:
            future.result(timeout=WAIT_S)
        list(executor.map(call, functions[:workers] * 2, timeout=WAIT_S))
        times: list[float] = []
        for _ in range(repeat):
            started = time.perf_counter()
            list(executor.map(call, functions, timeout=WAIT_S))
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)
    finally:
        executor.shutdown(wait=False, kill_workers=True)
        shutil.rmtree(barrier, ignore_errors=True)
        sys.modules.pop(MODULE, None)
        if str(root) in sys.path:
            sys.path.remove(str(root))


def _import_stages(root: Path, stages: int) -> list[Callable[[], object]]:
    """The stage functions, importable by reference in loky workers too."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # loky workers start with this process's sys.path
    spec = importlib.util.spec_from_file_location(MODULE, root / f"{MODULE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    try:
        spec.loader.exec_module(module)
    finally:
        REGISTRY.clear()
    return [getattr(module, f"s{index:04d}") for index in range(stages)]


def format_summary(result: dict[str, Any]) -> str:
    return (
        f"dispatch of {result['stages']} trivial stages on {result['workers']} workers: "
        f"supervisor {result['supervisor_ms']:.0f} ms (first run {result['first_run_ms']:.0f}), "
        f"plain loky {result['loky_ms']:.0f} ms, "
        f"ratio {result['ratio']:.2f} ({result['ok']} ok, {result['failed']} failed); "
        f"with up-to-date checks {result['incremental_ms']:.0f} ms, "
        f"ratio {result['incremental_ratio']:.2f}"
    )
