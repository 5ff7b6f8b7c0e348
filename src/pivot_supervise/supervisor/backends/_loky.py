"""The generational worker pool: one plain loky executor per generation.

Why not ``loky.get_reusable_executor``: with unchanged arguments it keeps the same
workers (and their stale modules) even with ``kill_workers=True``, and it is stored per
thread.  Owning one :class:`loky.ProcessPoolExecutor` per generation number makes a
restart a real restart, and makes "which code produced this result" a number.

A generation is promoted as soon as ONE of its workers validated the pipeline: one
load task per worker is submitted at once; the first to start imports the pipeline from
disk and writes the exact source it compiled into the generation's private directory;
the others wait at a *gate* (a file this backend holds locked) and, once it is released
right after the validation, import that recorded source in parallel (see
:mod:`...workers._tasks` and :mod:`...workers._overlay`).  So no worker of a generation
can run a newer, even broken, file than the one that was validated, and promotion costs
one import instead of one per worker.  A stage sent to a worker before it loaded loads
the same recorded source first (``RunRequest.validated``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import gc
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import loky
import structlog
import trio
from loky.process_executor import ShutdownExecutorError

from ..._config import Config
from ...pipeline._model import StageOutcome, failed_before_running
from ...workers._messages import (
    BatchRequest,
    LoadReply,
    LoadRequest,
    RunRequest,
    WarmReply,
    WarmRequest,
    running_dir,
    running_marker,
    stop_file,
)
from ...workers._overlay import VALIDATED_FILE
from ...workers._tasks import GATE_FILE, load_generation, run_stage, run_stages, warm_up
from .._bridge import wait_future
from .._core import GenerationFailed, GenerationLoaded
from ._base import StageResult
from ._park import Park
from ._procs import KILL_GRACE_S, WORKER_ENV, new_executor, reap, shut_down, sigint_blocked
from ._scratch import scratch_dir, sweep_abandoned
from ._standby import StandbyKeeper, StandbyUnavailable

__all__ = [
    "KILL_GRACE_S",
    "WORKER_ENV",
    "LoadGate",
    "LokyBackend",
    "ReadyStandby",
    "StandbyUnavailable",
]

log = structlog.get_logger("pivot_supervise.pool")


#: At most how long a promoted standby's other workers wait for its first stages.  Long
#: enough for the supervisor to decide and send them (~1-2 ms here); short enough that
#: a pool whose first stage runs for minutes is soon loaded.
LOADERS_GRACE_S = 0.02

#: How long closing the last backend waits for loky's resource tracker to exit.
TRACKER_STOP_TIMEOUT_S = 2.0


class ReadyStandby(NamedTuple):
    """A ready standby: its worker pids and how long starting them took."""

    pids: tuple[int, ...]
    fill_ms: float


#: Awaited before a validated generation's other workers may load (a test seam).
LoadGate = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class _Generation:
    number: int
    executor: loky.ProcessPoolExecutor
    #: Private: the validation claim, the gate, the validated source.
    directory: Path
    gate: _Gate
    pids: tuple[int, ...] = ()
    from_standby: bool = False
    #: Validated and promoted: its other workers load the validated source.
    loaded: bool = False
    #: The parked workers of the standby it came from (None: a cold start).
    park: Park | None = None
    #: Its other parked workers wait for the first stages (see :meth:`LokyBackend._defer`).
    deferred: bool = False
    #: Stage tasks sent and not answered yet.
    in_flight: int = 0

    @property
    def validated(self) -> str:
        return str(self.directory / VALIDATED_FILE)


class _Gate:
    """The lock file the other load tasks of a generation wait on (see ``_tasks``).

    Held exclusively from before the load tasks are submitted until :meth:`release`.
    Taking an uncontended ``flock`` with ``LOCK_NB`` never blocks, and closing the
    descriptor releases it; our descriptors are not inherited by the workers.
    """

    def __init__(self, directory: Path) -> None:
        self._fd: int | None = os.open(directory / GATE_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class LokyBackend:
    """Owns the executors of every live generation, keyed by generation number.

    With ``standby=True`` it also keeps the next generation's workers started ahead of
    time (see :mod:`._standby`); that needs :meth:`serve` running.  ``max_workers`` is
    the supervisor's cap on a pool (``min(max_workers, cpu count)``): with it the
    standby's size after a load is exactly the size the core will ask for next.
    """

    def __init__(
        self,
        config: Config,
        *,
        standby: bool = False,
        max_workers: int | None = None,
        load_gate: LoadGate | None = None,
        loaders_grace_s: float = LOADERS_GRACE_S,
    ) -> None:
        """``load_gate``: a test seam.  When given, it is awaited (in :meth:`serve`)
        after a generation was validated and promoted, before its other workers may
        load; a test uses it to act in between (say, break a file on disk).
        ``loaders_grace_s``: how long a promoted standby's other workers wait at most
        for its first stages (see :meth:`_defer`); a test makes it long.
        """
        self._config = config
        self._root = config.project_root.resolve()
        self._generations: dict[int, _Generation] = {}
        #: Generations being retired: until their workers are shut down, which a retire
        #: cancelled on the way (the session ending) leaves to :meth:`aclose`.
        self._retiring: dict[int, _Generation] = {}
        self._all_pids: set[int] = set()
        self._cap = max_workers
        self._standby = StandbyKeeper(self._root, config.preload) if standby else None
        self._load_gate = load_gate
        self._loaders_grace_s = loaders_grace_s
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ standby

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the standby filled (if enabled) until cancelled."""
        removed = await trio.to_thread.run_sync(sweep_abandoned)
        if removed:
            log.info("removed scratch directories of dead supervisors", count=len(removed))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._standby is not None:
                    await nursery.start(self._standby.serve)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def wait_standby(self) -> ReadyStandby:
        """Wait until a standby of the expected size is ready; its pids and fill time.

        Raises :class:`StandbyUnavailable` when standby is disabled or the last one was
        discarded.  Unbounded: wrap it in a timeout.
        """
        if self._standby is None:
            raise StandbyUnavailable("standby generations are disabled")
        ready = await self._standby.wait_ready()
        return ReadyStandby(ready.pids, ready.fill_ms)

    def _next_size(self, workers: int, result: GenerationLoaded | GenerationFailed) -> int:
        """The pool size the core will ask for next (it sizes by the last stage count)."""
        if not isinstance(result, GenerationLoaded):
            return workers
        stages = len(result.snapshot)
        if self._cap is not None:
            return max(1, min(self._cap, stages))
        return max(1, min(workers, stages))

    # --------------------------------------------------------------- generations

    async def load(self, generation: int, workers: int) -> GenerationLoaded | GenerationFailed:
        result: GenerationLoaded | GenerationFailed = GenerationFailed(generation, "cancelled")
        try:
            result = await self._load(generation, workers)
            return result
        finally:
            if self._standby is not None:
                self._standby.want(self._next_size(workers, result))

    async def _load(
        self, generation: int, workers: int, *, from_standby: bool = True
    ) -> GenerationLoaded | GenerationFailed:
        directory = scratch_dir(f"g{generation}")
        # Held before any load task exists: only the validating task may proceed.
        gate = _Gate(directory)
        try:
            return await self._load_into(directory, gate, generation, workers, from_standby)
        finally:
            gen = self._generations.get(generation)
            if gen is None or gen.gate is not gate:
                # Cancelled (the session ends) or failed before the generation was
                # registered: no retire will come for its gate and directory.
                gate.release()
                shutil.rmtree(directory, ignore_errors=True)

    async def _load_into(
        self, directory: Path, gate: _Gate, generation: int, workers: int, from_standby: bool
    ) -> GenerationLoaded | GenerationFailed:
        running_dir(directory).mkdir()  # once per generation, not once per stage
        request = LoadRequest(
            generation=generation,
            project_root=str(self._root),
            pipeline_file=None,  # as configured now: the validating worker reads it
            params_file=None,
            generation_dir=str(directory),
            load_slots=_load_slots(),
        )
        started = time.perf_counter()
        keeper = self._standby if from_standby else None
        standby = await keeper.take(workers) if keeper is not None else None
        futures: list[concurrent.futures.Future[LoadReply]] = []
        try:
            if standby is not None:
                self._all_pids.update(standby.pids)
                gen = _Generation(
                    generation,
                    standby.executor,
                    directory,
                    gate,
                    standby.pids,
                    from_standby=True,
                    park=standby.park,
                )
                self._generations[generation] = gen
                # Each standby worker waits in a park task: let exactly one go, to validate.
                futures = standby.park.futures
                standby.park.start(request)
                if not standby.alive():  # a death loky has not noticed yet
                    raise concurrent.futures.process.BrokenProcessPool(
                        "a standby worker died after it parked"
                    )
            else:
                gen = await trio.to_thread.run_sync(self._spawn, workers, gate, request, futures)
                self._all_pids.update(gen.pids)
            reply = await self._wait_for_validation(gen, futures)
        except (concurrent.futures.process.BrokenProcessPool, ShutdownExecutorError) as exc:
            gate.release()
            if standby is not None:
                # A standby worker died after it parked (loky may not have noticed it
                # when the standby was taken): not the pipeline's fault.
                log.info("a standby worker died; starting cold", error=_first_line(exc))
                await self.retire(generation)
                return await self._load(generation, workers, from_standby=False)
            return GenerationFailed(
                generation, f"a worker died while loading the pipeline: {_first_line(exc)}"
            )
        result = _verdict(generation, reply, gen.pids)
        if isinstance(result, GenerationLoaded):
            gen.loaded = True
            self._open_gate(generation, gate)
            if gen.park is not None:
                self._defer(gen)
        else:
            gate.release()  # the others answer "failed to validate"; the core retires it
            if gen.park is not None:
                gen.park.release_all()
        log.debug(
            "generation validated",
            generation=generation,
            workers=gen.pids,
            validated_in=reply.pid,
            standby=standby is not None,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return result

    def _defer(self, gen: _Generation) -> None:
        """Let a promoted standby's other workers load once its first stages are done.

        Right after promotion the generation's first stages run on the validating
        worker; a worker loading next to it takes CPU from them (on two cores a trivial
        first stage took ~2.5 ms instead of ~1 ms).  So the others wait until the first
        answer comes back, until more stage tasks are in flight than the one worker can
        take, or ``loaders_grace_s`` after the promotion, whichever is first; then a
        core's worth of them load, and one more as each finishes.  (A cold start's
        workers are all busy starting anyway: they load as soon as the gate opens.)
        """
        gen.deferred = True
        if self._nursery is None:  # no timer without serve(): let them go now
            self._let_others_load(gen)
            return
        self._nursery.start_soon(self._let_others_load_later, gen)

    async def _let_others_load_later(self, gen: _Generation) -> None:
        await trio.sleep(self._loaders_grace_s)
        self._let_others_load(gen)

    def _let_others_load(self, gen: _Generation) -> None:
        if gen.deferred and gen.park is not None:
            gen.deferred = False
            gen.park.release(_load_slots())

    def _spawn(
        self,
        workers: int,
        gate: _Gate,
        request: LoadRequest,
        futures: list[concurrent.futures.Future[LoadReply]],
    ) -> _Generation:
        """A cold start (blocking: the first submit() spawns the workers)."""
        with sigint_blocked():
            executor = new_executor(workers, self._config.preload)
            generation = request.generation
            gen = _Generation(generation, executor, Path(request.generation_dir), gate)
            self._generations[generation] = gen
            futures.extend(executor.submit(load_generation, request) for _ in range(workers))
            gen.pids = _spawned_pids(executor)
        if len(gen.pids) != workers:
            raise ShutdownExecutorError(f"expected {workers} worker processes, found {gen.pids}")
        return gen

    async def _wait_for_validation(
        self, gen: _Generation, futures: list[concurrent.futures.Future[LoadReply]]
    ) -> LoadReply:
        """The validating task's reply: the first to come, as the others wait at the gate.

        The other tasks' replies arrive later, on the trio thread too; one that failed
        to load the validated source is logged loudly (its stages fail naming it).
        """
        token = trio.lowlevel.current_trio_token()
        arrived = trio.Event()
        first: list[concurrent.futures.Future[LoadReply]] = []

        def on_trio_thread(future: concurrent.futures.Future[LoadReply]) -> None:
            try:
                if not first:
                    first.append(future)
                    arrived.set()
                else:
                    self._check_background_load(gen, future)
                    if gen.park is not None:
                        gen.park.release(1)  # the next parked worker may load now
            except Exception as exc:  # must never raise inside run_sync_soon
                log.error("could not check a worker's load", error=repr(exc))

        def on_done(future: concurrent.futures.Future[LoadReply]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(on_trio_thread, future)

        for future in futures:
            future.add_done_callback(on_done)
        await arrived.wait()
        return first[0].result()

    def _check_background_load(
        self, gen: _Generation, future: concurrent.futures.Future[LoadReply]
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # retired, or a worker died: the generation's stages report that
        reply = future.result()
        if reply.error is not None and gen.loaded and gen.number in self._generations:
            log.error(
                "a worker could not load the validated pipeline; its stages will fail",
                generation=gen.number,
                worker=reply.pid,
                error=reply.error,
            )

    def _open_gate(self, generation: int, gate: _Gate) -> None:
        """Let the generation's other workers load (after the test seam, if any)."""
        if self._load_gate is None:
            gate.release()
            return
        if self._nursery is None:
            gate.release()
            raise RuntimeError("a load_gate needs LokyBackend.serve running")
        self._nursery.start_soon(self._open_gate_later, generation, gate)

    async def _open_gate_later(self, generation: int, gate: _Gate) -> None:
        assert self._load_gate is not None
        try:
            await self._load_gate(generation)
        finally:
            gate.release()

    async def ping_each(self, generation: int) -> tuple[int, ...]:
        """Have each worker of ``generation`` answer one no-op; return their pids.

        The no-ops meet at a barrier, so each worker answers exactly one (a benchmark's
        "every worker is ready", or a health check).
        """
        gen = self._generations.get(generation)
        if gen is None:
            return ()
        self._let_others_load(gen)  # every worker must answer: none may wait for stages
        size = len(gen.pids)
        barrier = scratch_dir(f"ping-g{generation}")
        request = WarmRequest(str(self._root), str(barrier), size)
        try:
            futures: list[concurrent.futures.Future[WarmReply]] = await trio.to_thread.run_sync(
                lambda: [gen.executor.submit(warm_up, request) for _ in range(size)]
            )
            return tuple([(await wait_future(future)).pid for future in futures])
        finally:
            shutil.rmtree(barrier, ignore_errors=True)

    async def retire(self, generation: int) -> None:
        gen = self._generations.pop(generation, None)
        if gen is None:
            return
        self._retiring[generation] = gen
        gen.gate.release()
        try:
            # Off the trio thread: loky's manager thread kills the workers, and we wait
            # until it let go of the executor (see shut_down); abandoned if the caller
            # gives up (a session ending while the pool task retires a generation: a
            # one-shot run whose pipeline failed to load), and then done by aclose.
            await trio.to_thread.run_sync(shut_down, gen.executor, abandon_on_cancel=True)
            del self._retiring[generation]
        finally:
            if gen.park is not None:  # after the kill: a parked worker let go would load
                gen.park.close()
            shutil.rmtree(gen.directory, ignore_errors=True)
        log.debug("generation retired", generation=generation, workers=gen.pids)

    def worker_pids(self, generation: int) -> tuple[int, ...]:
        gen = self._generations.get(generation)
        return gen.pids if gen is not None else ()

    # -------------------------------------------------------------------- stages

    async def run(self, request: RunRequest) -> StageResult:
        # One stage alone belongs to no run that stops: its failure stops nothing else.
        return (await self.run_batch((request,), stop_on_failure=False))[0]

    async def run_batch(
        self, requests: Sequence[RunRequest], *, stop_on_failure: bool
    ) -> list[StageResult]:
        if not requests:
            return []
        gen = self._generations.get(requests[0].generation)
        if gen is None:
            why = "its generation was retired before it started"
            return [StageResult(_failed(request, why)) for request in requests]
        # A worker that gets these before its load task loads the validated source; one
        # that gets them after a failure stopped their run does not start them.
        stop = str(stop_file(gen.directory, requests[0].run_id)) if stop_on_failure else None
        requests = [
            dataclasses.replace(r, validated=gen.validated, stop_file=stop) for r in requests
        ]
        gen.in_flight += 1
        if gen.in_flight > 1:  # more work than the validating worker alone can take
            self._let_others_load(gen)
        try:
            # The workers are already up, so submit() only queues the task.
            if len(requests) == 1:
                outcome = await wait_future(gen.executor.submit(run_stage, requests[0]))
                outcomes: tuple[StageOutcome, ...] = (outcome,)
            else:
                batch = BatchRequest(tuple(requests), stop_on_failure)
                outcomes = await wait_future(gen.executor.submit(run_stages, batch))
            return [StageResult(outcome) for outcome in outcomes]
        except concurrent.futures.process.BrokenProcessPool as exc:
            return _lost(gen.directory, requests, exc)
        except (ShutdownExecutorError, RuntimeError, concurrent.futures.CancelledError):
            why = "its generation was retired while it ran"
            return [StageResult(_failed(request, why)) for request in requests]
        finally:
            gen.in_flight -= 1
            self._let_others_load(gen)

    # ------------------------------------------------------------------- closing

    async def aclose(self) -> None:
        """Retire every generation, then make sure each worker we ever had is gone."""
        for number in list(self._generations):
            await self.retire(number)
        for gen in list(self._retiring.values()):
            await trio.to_thread.run_sync(shut_down, gen.executor)
        self._retiring.clear()
        pids = set(self._all_pids)
        if self._standby is not None:
            await self._standby.aclose()
            pids |= self._standby.all_pids
        await trio.to_thread.run_sync(reap, pids)
        # loky's resource trackers belong to the process, not to one backend: another
        # supervisor in this process may still use them.  The process stops them on its
        # way out, with :func:`release_process_resources`.


def _verdict(
    generation: int, reply: LoadReply, pids: tuple[int, ...]
) -> GenerationLoaded | GenerationFailed:
    if not reply.validated:
        # Impossible while the gate is held (only the validating task can answer); a
        # bug, but no reason to promote code nobody validated.
        return GenerationFailed(generation, f"worker {reply.pid} answered before validation")
    if not reply.ok or reply.snapshot is None:
        return GenerationFailed(generation, reply.error or "unknown error", reply.traceback or "")
    if len(set(pids)) != len(pids) or reply.pid not in pids:
        return GenerationFailed(
            generation, f"unexpected worker pids {pids} (validated in {reply.pid})"
        )
    return GenerationLoaded(generation, reply.snapshot, pids)


def _lost(directory: Path, requests: Sequence[RunRequest], exc: BaseException) -> list[StageResult]:
    """The results of stages whose worker died under them (one task, one worker)."""
    codes = _exit_codes(exc)
    crashed = next(
        ((r.stage, pid) for r in requests if (pid := _crashed_pid(directory, r.stage))), None
    )
    results: list[StageResult] = []
    for request in requests:
        if crashed is None:
            why, pid = f"a worker process died while running it ({codes})", 0
        elif crashed[0] == request.stage:
            why, pid = f"worker {crashed[1]} died while running it ({codes})", crashed[1]
        else:
            why = f"worker {crashed[1]} died running '{crashed[0]}', sent with it ({codes})"
            pid = crashed[1]
        results.append(StageResult(_failed(request, why, pid=pid), worker_lost=True))
    return results


def _crashed_pid(directory: Path, stage: str) -> int:
    """The pid a crashed stage was running on, from its worker's marker (0: unknown)."""
    wanted = stage.encode()
    for pid in _pids_marked(directory):
        try:
            if running_marker(directory, pid).read_bytes() == wanted:
                return pid
        except OSError:
            continue
    return 0


def _pids_marked(directory: Path) -> list[int]:
    try:
        names = os.listdir(running_dir(directory))
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def _failed(request: RunRequest, why: str, *, pid: int = 0) -> StageOutcome:
    error = f"stage '{request.stage}' did not finish: {why}"
    return failed_before_running(request.stage, request.generation, error, pid=pid)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _exit_codes(exc: BaseException) -> str:
    text = str(exc)
    marker = "The exit codes of the workers are"
    if marker in text:
        # loky goes on with a sentence about tracebacks on stderr: keep one line.
        codes = text.split(marker, 1)[1].strip().splitlines()[0]
        return "exit codes " + codes.rstrip(".")
    return _first_line(exc)


def release_process_resources() -> None:
    """Stop this process's resource trackers, once no supervisor runs any more.

    loky starts one resource tracker per process (and, through it, the standard
    library's); they outlive every executor, and exit by themselves when the process
    does.  Call this right before the process exits (the CLI does) or after the last
    supervisor of an embedding application, to leave no helper process behind.  It
    never kills them (that would leak named semaphores): shut-down executors are
    collected first, so that they unregister their semaphores, then each tracker is
    asked to stop, with a bounded wait.  Blocking: not for the trio thread.
    """
    gc.collect()
    from multiprocessing import resource_tracker as stdlib_tracker

    from loky.backend import resource_tracker as loky_tracker

    trackers: list[object] = [
        loky_tracker._resource_tracker,  # pyright: ignore[reportPrivateUsage]
        stdlib_tracker._resource_tracker,  # pyright: ignore[reportPrivateUsage]
    ]
    for tracker in trackers:
        stop = getattr(tracker, "_stop", None)
        if not callable(stop):
            continue
        try:
            try:
                stop(wait_timeout=TRACKER_STOP_TIMEOUT_S)
            except TypeError:  # a tracker whose _stop takes no timeout
                stop()
        except Exception as exc:  # best effort: an exit must not turn into a crash
            log.debug("could not stop a resource tracker", error=repr(exc))


@functools.cache
def _load_slots() -> int:
    """How many of a generation's other workers load at once: all cores but one.

    Right after promotion the first stages run on the validating worker; the other
    workers' loads are CPU-bound.  All of them at once (16 workers on 2 cores) slowed
    a trivial first stage from ~2 ms to ~10-15 ms here; one core's worth of loaders
    keeps the time until every worker is loaded about the same.
    """
    return max(1, (loky.cpu_count() or 1) - 1)


def _spawned_pids(executor: loky.ProcessPoolExecutor) -> tuple[int, ...]:
    """The worker pids of an executor whose first ``submit`` just spawned them.

    loky keeps its workers in ``_processes`` (pid -> process), filled by that submit;
    there is no public accessor.  A loky without it yields no pids, and the load fails
    with a clear error rather than promoting a generation we could not account for.
    """
    processes: object = getattr(executor, "_processes", None)
    if not isinstance(processes, dict):
        return ()
    return tuple(pid for pid in cast("dict[object, object]", processes) if isinstance(pid, int))
