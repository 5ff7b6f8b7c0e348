"""The standby generation: worker processes started ahead of time, idle, code-free.

Spawning fresh interpreters is the whole cost of a restart (about 120 ms for one or two
workers, 500 ms for eight on two cores, linear in workers / cores).  The keeper pays it
before anyone waits: it keeps one executor of the size the next generation will need
spawned, initialised (parent watchdog, ``preload`` modules imported) and warmed (every
worker answered a no-op), but with no project code imported.  A load then only has to
import the pipeline into workers that are already up.

Rules that keep the foundation's guarantees:

- A standby is consumed by exactly one load attempt: it becomes that generation, and if
  the load fails, the generation is retired like any other.  It is never reused.
- A standby whose workers imported project code while starting (a ``preload`` entry
  that is project code) is discarded, not promoted; so is one whose size no longer fits
  or one that lost a worker.
- Standby workers are started by :func:`._procs.new_executor`, exactly like any other
  generation's: fresh interpreters, the parent watchdog, no bytecode written.
- Every loky call that may block (creating the executor, the first ``submit`` that
  spawns the processes, ``shutdown``) runs on a worker thread, never the trio thread.

The keeper only works while :meth:`StandbyKeeper.serve` runs (in the supervisor's
session nursery); without it, every load is a cold start, as before.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import loky
import structlog
import trio
from loky.process_executor import ShutdownExecutorError

from ...workers._messages import WarmReply, WarmRequest
from ...workers._tasks import warm_up
from .._bridge import wait_future
from ._park import Park
from ._procs import new_executor, process_gone, shut_down, sigint_blocked
from ._scratch import scratch_dir

log = structlog.get_logger("pivot_supervise.standby")


#: How long a refill waits before it spawns.  A reload is followed at once by the new
#: generation's first stages; spawning interpreters right then competes with them for
#: the CPU (on two cores it slowed a trivial stage from ~1.5 ms to ~3-8 ms).  The cost:
#: a second reload within this time (plus the refill itself) starts cold.
REFILL_DELAY_S = 0.1


#: How long a standby's workers may take to settle in their park tasks.
PARK_TIMEOUT_S = 30.0


class StandbyUnavailable(Exception):
    """No standby can be made ready (disabled, or the last attempt was discarded)."""


@dataclass(frozen=True, slots=True)
class Standby:
    """A ready standby: an executor whose ``size`` workers are up, each parked in a task
    that a load lets go (see :mod:`._park`)."""

    executor: loky.ProcessPoolExecutor
    size: int
    pids: tuple[int, ...]
    fill_ms: float
    park: Park

    def intact(self) -> bool:
        """Every worker still waits in its park task, as far as loky noticed.

        A worker that dies ends every park task of its executor (loky breaks the whole
        pool), so the futures tell without a system call.  Loky notices a death a little
        later than ``/proc`` shows it: see :meth:`alive`.
        """
        return not any(future.done() for future in self.park.futures)

    def alive(self) -> bool:
        """Every worker process still runs (a zombie counts as dead): ``/proc`` per pid.

        ~20 us a worker, so the backend asks while the validating worker loads rather
        than before it starts.
        """
        return not any(process_gone(pid) for pid in self.pids)


class StandbyKeeper:
    """Keeps one standby of the wanted size ready; refills it in the background."""

    def __init__(self, project_root: Path, preload: tuple[str, ...] = ()) -> None:
        self._root = project_root
        self._preload = preload
        self._ready: Standby | None = None
        self._wanted: int | None = None
        self._wake = trio.Event()
        self._changed = trio.Event()
        self._filling = False
        self._failed: str | None = None
        #: Executors created and not yet handed out (being filled, or ready).
        self._owned: set[loky.ProcessPoolExecutor] = set()
        #: Every worker pid a standby ever had, for the final reaping.
        self.all_pids: set[int] = set()

    # ------------------------------------------------------------- for the backend

    def want(self, size: int) -> None:
        """Ask for a standby of ``size`` workers (refilled by :meth:`serve`)."""
        self._wanted = max(1, size)
        self._wake.set()
        self._notify()

    async def take(self, size: int) -> Standby | None:
        """Hand out the ready standby if it has exactly ``size`` live workers.

        A standby that does not fit is shut down (it would have to be rebuilt anyway).
        Either way the keeper holds no standby afterwards; the caller asks for the next
        one with :meth:`want` once it knows the size.
        """
        ready, self._ready = self._ready, None
        if ready is None:
            return None
        self._notify()
        if ready.size == size and ready.intact():
            self._owned.discard(ready.executor)
            log.debug("standby taken", workers=ready.pids)
            return ready
        why = "size no longer fits" if ready.size != size else "a worker died"
        log.debug("standby discarded", reason=why, size=ready.size, wanted=size)
        await self._discard(ready.executor, ready.park)
        return None

    async def wait_ready(self) -> Standby:
        """Wait until a standby of the wanted size is ready and no refill is pending.

        Raises :class:`StandbyUnavailable` when the last attempt was discarded and
        nothing will retry until the next load.
        """
        while True:
            ready = self._ready
            if ready is not None and ready.size == self._wanted and not self._wake.is_set():
                return ready
            if self._failed is not None and not self._filling and not self._wake.is_set():
                raise StandbyUnavailable(self._failed)
            await self._changed.wait()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refill the standby whenever asked to; runs until cancelled.

        A refill starts :data:`REFILL_DELAY_S` after the request, at the size wanted
        then (a load in between may have changed it).
        """
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            wanted = self._wanted
            ready = self._ready
            if wanted is None or (ready is not None and ready.size == wanted and ready.intact()):
                self._notify()
                continue
            if ready is not None:
                self._ready = None
                await self._discard(ready.executor, ready.park)
            self._filling, self._failed = True, None
            try:
                await trio.sleep(REFILL_DELAY_S)
                self._ready = await self._fill(self._wanted or wanted)
            finally:
                self._filling = False
                self._notify()

    async def aclose(self) -> None:
        """Shut down whatever the keeper still owns (ready or half-filled)."""
        ready, self._ready = self._ready, None
        for executor in list(self._owned):
            await self._shutdown(executor)
        if ready is not None:
            ready.park.close()

    # ------------------------------------------------------------------ internals

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _fill(self, size: int) -> Standby | None:
        started = time.perf_counter()
        barrier = scratch_dir("standby")
        request = WarmRequest(str(self._root), str(barrier), size)

        def spawn() -> tuple[loky.ProcessPoolExecutor, list[concurrent.futures.Future[WarmReply]]]:
            # The executor's creation may start loky's resource tracker and the first
            # submit() spawns every worker: both block, so both run here.
            with sigint_blocked():
                executor = new_executor(size, self._preload)
                self._owned.add(executor)  # before anything can fail: aclose kills it
                return executor, [executor.submit(warm_up, request) for _ in range(size)]

        try:
            executor, futures = await trio.to_thread.run_sync(spawn)
            try:
                replies = [await wait_future(future) for future in futures]
            except (concurrent.futures.process.BrokenProcessPool, ShutdownExecutorError) as exc:
                await self._shutdown(executor)
                return self._give_up(f"a standby worker died while starting: {exc}")
        finally:
            shutil.rmtree(barrier, ignore_errors=True)
        pids = tuple(reply.pid for reply in replies)
        self.all_pids.update(pids)
        tainted = sorted({name for reply in replies for name in reply.project_modules})
        errors = [reply.error for reply in replies if reply.error is not None]
        why: str | None = None
        if tainted:
            why = (
                f"its workers imported project code while starting ({', '.join(tainted)}); "
                "the preload setting must name third-party modules only"
            )
        elif errors:
            why = errors[0]
        elif len(set(pids)) != size:
            why = f"a worker answered twice (pids {pids})"
        if why is not None:
            await self._shutdown(executor)
            return self._give_up(why)
        parked = Park(scratch_dir("park"), size)
        try:
            await trio.to_thread.run_sync(parked.submit, executor)
            with trio.move_on_after(PARK_TIMEOUT_S) as waited:
                await parked.wait_parked()
        except BaseException:
            await self._discard(executor, parked)
            raise
        if waited.cancelled_caught:
            await self._discard(executor, parked)
            return self._give_up(f"its workers did not all park within {PARK_TIMEOUT_S:.0f} s")
        fill_ms = (time.perf_counter() - started) * 1000
        log.debug("standby ready", workers=pids, ms=round(fill_ms, 1))
        return Standby(executor, size, pids, fill_ms, parked)

    def _give_up(self, why: str) -> None:
        """A discarded standby; the next load starts cold and asks again."""
        self._failed = f"standby discarded: {why}"
        log.warning("standby discarded; the next reload starts its workers cold", reason=why)

    async def _discard(self, executor: loky.ProcessPoolExecutor, park: Park) -> None:
        """Shut a standby's executor down and remove its park.

        The park first: the awaited shutdown raises at once when we are cancelled (a
        session ending), and the park's directory must not outlive us.  Workers let go
        without a load request answer with an error and are killed with the pool.
        """
        park.close()
        await self._shutdown(executor)

    async def _shutdown(self, executor: loky.ProcessPoolExecutor) -> None:
        self._owned.discard(executor)
        await trio.to_thread.run_sync(shut_down, executor, abandon_on_cancel=True)
