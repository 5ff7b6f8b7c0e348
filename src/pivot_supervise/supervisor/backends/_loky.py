"""The generational worker pool: one plain loky executor per generation.

Why not ``loky.get_reusable_executor``: with unchanged arguments it keeps the same
workers (and their stale modules) even with ``kill_workers=True``, and it is stored per
thread.  Owning one :class:`loky.ProcessPoolExecutor` per generation number makes a
restart a real restart, and makes "which code produced this result" a number.

A generation becomes usable only after each of its workers imported the pipeline: the
load tasks meet at a barrier, so that every worker takes exactly one, and all of them
must agree on the source they read.  A worker that imported lazily later could read a
newer, even broken, file than the one that was validated.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import loky
import structlog
import trio
from loky.backend.context import get_context
from loky.process_executor import ShutdownExecutorError

from ...pipeline._model import StageOutcome
from ...workers._messages import LoadReply, LoadRequest, RunRequest
from ...workers._tasks import initialize_worker, load_generation, run_stage
from .._bridge import wait_future
from .._config import Config
from .._core import GenerationFailed, GenerationLoaded
from ._base import StageResult

log = structlog.get_logger("pivot_supervise.pool")

#: Environment of every worker interpreter, set before it starts.  Project modules are
#: compiled from source by the workers' import hook; not writing bytecode at all keeps
#: third-party caches untouched by us and project ``__pycache__`` from growing.
WORKER_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}

#: How long a retired generation's workers get to disappear before we SIGKILL them.
KILL_GRACE_S = 2.0


@dataclass(slots=True)
class _Generation:
    number: int
    executor: loky.ProcessPoolExecutor
    barrier_dir: Path
    pids: tuple[int, ...] = ()


class LokyBackend:
    """Owns the executors of every live generation, keyed by generation number."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._root = config.project_root.resolve()
        self._generations: dict[int, _Generation] = {}
        self._all_pids: set[int] = set()

    # --------------------------------------------------------------- generations

    async def load(self, generation: int, workers: int) -> GenerationLoaded | GenerationFailed:
        barrier_dir = Path(tempfile.mkdtemp(prefix=f"pivot-supervise-g{generation}-"))
        request = LoadRequest(
            generation=generation,
            project_root=str(self._root),
            pipeline_file=self._config.pipeline,
            params_file=self._config.params,
            barrier_dir=str(barrier_dir),
            barrier_size=workers,
        )
        started = time.perf_counter()

        def spawn() -> tuple[loky.ProcessPoolExecutor, list[concurrent.futures.Future[LoadReply]]]:
            # submit() spawns the workers and blocks meanwhile: never on the trio thread.
            executor = loky.ProcessPoolExecutor(
                max_workers=workers,
                context=get_context("loky"),
                initializer=initialize_worker,
                initargs=(os.getpid(),),
                env=WORKER_ENV,
            )
            self._generations[generation] = _Generation(generation, executor, barrier_dir)
            return executor, [executor.submit(load_generation, request) for _ in range(workers)]

        _, futures = await trio.to_thread.run_sync(spawn)
        replies: list[LoadReply] = []
        try:
            for future in futures:
                replies.append(await wait_future(future))
        except (concurrent.futures.process.BrokenProcessPool, ShutdownExecutorError) as exc:
            return GenerationFailed(
                generation, f"a worker died while loading the pipeline: {_first_line(exc)}"
            )
        pids = tuple(reply.pid for reply in replies)
        self._generations[generation].pids = pids
        self._all_pids.update(pids)
        log.debug(
            "generation loaded",
            generation=generation,
            workers=pids,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return _verdict(generation, replies)

    async def retire(self, generation: int) -> None:
        gen = self._generations.pop(generation, None)
        if gen is None:
            return
        # shutdown(wait=False) only wakes loky's manager thread, which kills the workers.
        await trio.to_thread.run_sync(lambda: gen.executor.shutdown(wait=False, kill_workers=True))
        shutil.rmtree(gen.barrier_dir, ignore_errors=True)
        log.debug("generation retired", generation=generation, workers=gen.pids)

    def worker_pids(self, generation: int) -> tuple[int, ...]:
        gen = self._generations.get(generation)
        return gen.pids if gen is not None else ()

    # -------------------------------------------------------------------- stages

    async def run(self, request: RunRequest) -> StageResult:
        gen = self._generations.get(request.generation)
        if gen is None:
            return StageResult(_failed(request, "its generation was retired before it started"))
        try:
            # The workers are already up, so submit() only queues the task.
            future = gen.executor.submit(run_stage, request)
            return StageResult(await wait_future(future))
        except concurrent.futures.process.BrokenProcessPool as exc:
            reason = f"a worker process died while running it ({_exit_codes(exc)})"
            return StageResult(_failed(request, reason), worker_lost=True)
        except (ShutdownExecutorError, RuntimeError, concurrent.futures.CancelledError):
            return StageResult(_failed(request, "its generation was retired while it ran"))

    # ------------------------------------------------------------------- closing

    async def aclose(self) -> None:
        """Retire every generation, then make sure each worker we ever had is gone."""
        for number in list(self._generations):
            await self.retire(number)
        await trio.to_thread.run_sync(_reap, set(self._all_pids))
        _stop_resource_tracker()


def _verdict(generation: int, replies: list[LoadReply]) -> GenerationLoaded | GenerationFailed:
    for reply in replies:
        if not reply.ok:
            return GenerationFailed(
                generation, reply.error or "unknown error", reply.traceback or ""
            )
    snapshots = [reply.snapshot for reply in replies if reply.snapshot is not None]
    if len({s.code_digest for s in snapshots}) > 1:
        return GenerationFailed(
            generation, "the project's code changed while the generation was loading it"
        )
    pids = tuple(reply.pid for reply in replies)
    if len(set(pids)) != len(pids):
        return GenerationFailed(generation, f"a worker took two load tasks (pids {pids})")
    return GenerationLoaded(generation, snapshots[0], pids)


def _failed(request: RunRequest, why: str) -> StageOutcome:
    return StageOutcome(
        stage=request.stage,
        generation=request.generation,
        pid=0,
        status="failed",
        duration_ms=0.0,
        error=f"stage '{request.stage}' did not finish: {why}",
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _exit_codes(exc: BaseException) -> str:
    text = str(exc)
    marker = "The exit codes of the workers are"
    if marker in text:
        return "exit codes " + text.split(marker, 1)[1].strip().rstrip(".")
    return _first_line(exc)


def _process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for loky to reap it counts)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _reap(pids: set[int]) -> None:
    """Wait briefly for ``pids`` to exit; SIGKILL whatever is still there."""
    deadline = time.monotonic() + KILL_GRACE_S
    alive = {pid for pid in pids if not _process_gone(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)
        alive = {pid for pid in alive if not _process_gone(pid)}
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        log.warning("worker did not exit after shutdown; killed it", pid=pid)


def _stop_resource_tracker() -> None:
    """Stop loky's resource tracker cleanly (killing it would leak named semaphores)."""
    try:
        from loky.backend import resource_tracker

        tracker = resource_tracker._resource_tracker  # pyright: ignore[reportPrivateUsage]
        stop = getattr(tracker, "_stop", None)
        if callable(stop):
            stop()
    except Exception as exc:  # a best-effort cleanup must not turn an exit into a crash
        log.debug("could not stop loky's resource tracker", error=repr(exc))
