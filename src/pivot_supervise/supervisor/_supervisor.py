"""The supervision tree: thin trio tasks around the sans-IO core.

::

    Supervisor.run
     |- signals        SIGINT / SIGTERM -> graceful stop (a second SIGINT: exit 130)
     |- sinks          terminal / JSON lines, fed by the event bus
     '- session
         |- driver     inbox -> core.handle -> actions routed to the tasks below
         |- watcher    watchfiles -> FilesChanged            (watch mode only)
         |- reloader   StartGeneration -> backend.load -> GenerationLoaded / Failed
         |- executor   RunStage -> backend.run_batch -> StageFinished (a waiter per trip)
         |- pool       Retire -> backend.retire (off the trio thread)
         '- backend    backend.serve: keeps the standby generation warm (loky)

Every task only does I/O; what to do is decided by :class:`SupervisorCore`.  Channels
between the driver and the tasks are unbounded so that the driver never waits on a
task that is itself waiting to hand the driver an input.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import loky
import structlog
import trio

from .._config import Config
from .._state_dir import STATE_DIR, sweep_leftovers
from ..pipeline._freshness import Decision
from ..pipeline._model import StageOutcome, StageSpec
from ..workers._bytecode import trim
from ..workers._messages import RunRequest
from ._batching import plan_batches
from ._bus import EventBus, Subscription
from ._core import (
    Action,
    CancelAttempts,
    Exit,
    Input,
    Promote,
    Publish,
    ReloadInProcess,
    Retire,
    RunOptions,
    RunRequested,
    RunStage,
    StageFinished,
    StartGeneration,
    SupervisorCore,
)
from ._events import Event
from ._incremental import Check, Incremental
from ._server_file import pid_alive
from ._state import StateStoreError
from ._watcher import ProjectWatcher
from .backends import Backend, InlineBackend, LokyBackend

log = structlog.get_logger("pivot_supervise.supervisor")

#: A task that lives in the session nursery beside the supervisor's own (e.g. the API
#: server): started with ``nursery.start(service, supervisor)``, cancelled at the end.
Service = Callable[["Supervisor", trio.TaskStatus[None]], Awaitable[None]]

_T = TypeVar("_T")

#: Stages in flight per worker while stages are quick (see ``SupervisorCore.capacity``).
QUICK_STAGES_PER_WORKER = 16
#: Exit code after a second Ctrl-C, as shells report death by SIGINT.
EXIT_INTERRUPTED_TWICE = 130
#: The events the run history is kept from.
HISTORY_EVENTS = frozenset({"run_started", "stage_finished", "run_finished"})
#: How long a finished stage waits for the history to record its run's start.
HISTORY_WAIT_S = 1.0
#: How long shutting the workers down may take before we stop waiting politely.
SHUTDOWN_TIMEOUT_S = 4.0


def make_backend(
    config: Config, options: RunOptions, *, standby: bool = False, cpu_count: int | None = None
) -> Backend:
    """The backend for ``options``; ``standby`` keeps the next generation's workers
    started ahead (it needs the backend's ``serve`` running, as in a session)."""
    if not options.parallel:
        return InlineBackend(config)
    cap = cpu_count or loky.cpu_count()
    if options.max_workers is not None:
        cap = min(cap, options.max_workers)
    return LokyBackend(config, standby=standby, max_workers=cap)


class Supervisor:
    """One supervisor session: ``run`` (one shot) or ``watch`` (until stopped).

    Subscribe to :attr:`bus` before :meth:`run` to see every event.  Inputs from
    outside (an API, a test, the demo) go through :meth:`send`.
    """

    def __init__(
        self,
        config: Config,
        options: RunOptions,
        *,
        targets: tuple[str, ...] | None = None,
        watch: bool = True,
        backend: Backend | None = None,
        handle_signals: bool = True,
        cpu_count: int | None = None,
        services: Sequence[Service] = (),
        standby: bool = True,
        incremental: bool = True,
        force: bool | frozenset[str] = False,
    ) -> None:
        self.config = config
        self.options = options
        self.targets = targets
        self.watch = watch
        self.backend = (
            backend
            if backend is not None
            else make_backend(config, options, standby=standby, cpu_count=cpu_count)
        )
        self.core = SupervisorCore(
            cpu_count=cpu_count or loky.cpu_count(),
            watch=watch,
            quick_stages_per_worker=QUICK_STAGES_PER_WORKER,
        )
        self.bus = EventBus()
        self.exit_code: int | None = None
        self.started = trio.Event()
        self._handle_signals = handle_signals
        self._inbox_send, self._inbox = trio.open_memory_channel[Input](math.inf)
        self._session_scope = trio.CancelScope()
        self._waiters: dict[int, _Waiter] = {}
        #: Trips in flight, by generation (see :meth:`_idle_workers`).
        self._trips: collections.Counter[int] = collections.Counter()
        self._watcher = ProjectWatcher(config) if watch else None
        self._services = tuple(services)
        self._use_incremental = incremental
        self._force = force
        #: The state store and hash cache, while a session runs with incremental runs.
        self.incremental: Incremental | None = None
        #: Set once the history has recorded a run's start (by the supervisor's run id).
        self._history_started: dict[int, trio.Event] = {}
        self._sent = 0
        self._handled = 0
        self._replies: dict[int, _Reply] = {}

    # ---------------------------------------------------------------- controls

    def send(self, event: Input) -> None:
        """Hand the core an input (from the trio thread)."""
        self._inbox_send.send_nowait(event)
        self._sent += 1

    async def request(self, event: Input) -> tuple[dict[str, Any], dict[str, Any]]:
        """Send ``event``, wait until the core handled it, and return ``core.status()``
        right before and right after: exactly what this input did (the run it started or
        joined, the run it cancelled), whatever else is queued around it."""
        self.send(event)
        reply = self._replies[self._sent] = _Reply()
        await reply.done.wait()
        return reply.before, reply.after

    def stop(self, exit_code: int = 0) -> None:
        """Ask the session to end; :meth:`run` then cleans up and returns."""
        if self.exit_code is None:
            self.exit_code = exit_code
        self._session_scope.cancel()

    # -------------------------------------------------------------------- tree

    async def run(self) -> int:
        """Run the session to its end; returns the exit code.

        The event bus is closed on the way out, so sinks draining a subscription end
        right after the last event (``supervisor_stopped``).
        """
        async with trio.open_nursery() as outer:
            signals = trio.CancelScope()
            if self._handle_signals:
                await outer.start(self._signals, signals)
            await self._open_incremental(outer)
            outer.start_soon(self._tidy_state_dir)
            try:
                await self._session()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT_S):
                    await self.backend.aclose()
                if self.exit_code is None:
                    self.exit_code = 0
                self._publish(Event("supervisor_stopped", {"exit_code": self.exit_code}))
                # Sinks (the history included) drain what is left, then end.
                self.bus.close()
                signals.cancel()
        assert self.exit_code is not None
        return self.exit_code

    async def _tidy_state_dir(self) -> None:
        """Keep the project's cache of compiled code bounded, and drop what writers
        killed mid-write left behind: once a session, off the trio thread, rather than
        at each store in a worker on its way to a promotion."""
        root = self.config.project_root
        removed = await trio.to_thread.run_sync(trim, root)
        if removed:
            log.debug("dropped the oldest compiled code", entries=removed)
        leftovers = await trio.to_thread.run_sync(sweep_leftovers, root / STATE_DIR, pid_alive)
        if leftovers:
            log.debug("dropped files left half-written", files=leftovers)

    async def _open_incremental(self, nursery: trio.Nursery) -> None:
        """Open the state store, and keep the run history from the events."""
        if not self._use_incremental:
            return
        try:
            self.incremental = await trio.to_thread.run_sync(
                Incremental.open, self.config.project_root
            )
        except StateStoreError as exc:
            self._publish(
                Event("pipeline_warning", {"message": f"{exc}; every stage will run each time"})
            )
            return
        for warning in self.incremental.warnings:
            self._publish(Event("pipeline_warning", {"message": warning}))
        nursery.start_soon(self._keep_history, self.incremental, self.bus.subscribe())

    async def _keep_history(self, incremental: Incremental, subscription: Subscription) -> None:
        """Record runs from the events, in batches: one trip off-thread per wake-up."""
        try:
            async for event in subscription.events:
                batch = [event, *_pending(subscription.events)]
                wanted = [e for e in batch if e.name in HISTORY_EVENTS]
                if not wanted:
                    continue
                try:
                    await trio.to_thread.run_sync(incremental.record_events, wanted)
                except StateStoreError as exc:
                    log.warning("could not record the run history", error=str(exc))
                for recorded in wanted:
                    if recorded.name == "run_started":
                        self._history_event(recorded.get("run_id")).set()
                    elif recorded.name == "run_finished":
                        self._history_started.pop(recorded.get("run_id"), None)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(incremental.close)

    def _history_event(self, run_id: int) -> trio.Event:
        return self._history_started.setdefault(run_id, trio.Event())

    async def _session(self) -> None:
        reload_send, reload_recv = trio.open_memory_channel[StartGeneration | ReloadInProcess](
            math.inf
        )
        exec_send, exec_recv = trio.open_memory_channel[RunStage | CancelAttempts](math.inf)
        pool_send, pool_recv = trio.open_memory_channel[Promote | Retire](math.inf)
        routes = _Routes(reload_send, exec_send, pool_send)
        with self._session_scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.backend.serve)
                nursery.start_soon(self._reloader, reload_recv)
                nursery.start_soon(self._executor, exec_recv)
                nursery.start_soon(self._pool, pool_recv)
                if self._watcher is not None:
                    await nursery.start(self._watch)
                for service in self._services:
                    await nursery.start(service, self)
                self._publish(
                    Event(
                        "supervisor_started",
                        {
                            "project": str(self.config.project_root),
                            "pid": os.getpid(),
                            "watch": self.watch,
                            "parallel": self.options.parallel,
                            "max_workers": self.core.pool_size(None),
                            "on_error": self.options.on_error,
                            "stages": list(self.targets) if self.targets else None,
                        },
                    )
                )
                self.send(
                    RunRequested(self.targets, self.options, trigger="start", force=self._force)
                )
                self.started.set()
                await self._driver(routes)

    async def _driver(self, routes: _Routes) -> None:
        async for first in self._inbox:
            # Whatever else is queued too, in one turn: the stages that the finished
            # stages free then reach the executor together, and can share trips.
            for event in [first, *_pending(self._inbox)]:
                self._handled += 1
                reply = self._replies.pop(self._handled, None)
                if reply is not None:
                    reply.before = self.core.status()
                for action in self.core.handle(event):
                    self._apply(action, routes)
                if reply is not None:
                    reply.after = self.core.status()
                    reply.done.set()

    def _apply(self, action: Action, routes: _Routes) -> None:
        match action:
            case Publish(event=event):
                self._publish(event)
            case StartGeneration() | ReloadInProcess():
                routes.reload.send_nowait(action)
            case RunStage() | CancelAttempts():
                routes.execute.send_nowait(action)
            case Promote() | Retire():
                routes.pool.send_nowait(action)
            case Exit(code=code):
                self.stop(code)

    def _publish(self, event: Event) -> None:
        stamped = Event(event.name, event.fields, _now())
        self.bus.publish(stamped)

    # ------------------------------------------------------------------- tasks

    async def _watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self._watcher is not None
        send, receive = trio.open_memory_channel[Input](math.inf)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watcher.run, send)
            task_status.started()
            async for changed in receive:
                self.send(changed)

    async def _reloader(
        self, requests: trio.MemoryReceiveChannel[StartGeneration | ReloadInProcess]
    ) -> None:
        async for request in requests:
            with structlog.contextvars.bound_contextvars(generation=request.generation):
                workers = request.workers if isinstance(request, StartGeneration) else 0
                log.info("loading generation", trigger=request.trigger, workers=workers)
                result = await self.backend.load(request.generation, workers)
            self.send(result)

    async def _executor(
        self, requests: trio.MemoryReceiveChannel[RunStage | CancelAttempts]
    ) -> None:
        """Start stages in trips (see :mod:`._batching`), one waiter task per trip.

        Everything already queued is taken at once, so that the stages one driver turn
        dispatched can share trips; a cancel is applied in its place in that order.
        """
        async with trio.open_nursery() as waiters:
            async for first in requests:
                runs: list[RunStage] = []
                for request in [first, *_pending(requests)]:
                    if isinstance(request, RunStage):
                        runs.append(request)
                        continue
                    self._start_trips(waiters, runs)
                    runs = []
                    for attempt in request.attempts:
                        waiter = self._waiters.pop(attempt, None)
                        if waiter is not None:
                            waiter.cancel(attempt)
                self._start_trips(waiters, runs)

    def _start_trips(self, nursery: trio.Nursery, runs: list[RunStage]) -> None:
        for trip in plan_batches(runs, self._idle_workers):
            waiter = _Waiter({run.attempt for run in trip})
            for run in trip:
                self._waiters[run.attempt] = waiter
            self._trips[trip[0].generation] += 1
            nursery.start_soon(self._wait_for_trip, trip, waiter)

    def _idle_workers(self, generation: int) -> int:
        """Workers of ``generation`` that may have no trip queued (0: each has one)."""
        workers = max(1, len(self.backend.worker_pids(generation)))
        return max(0, workers - self._trips[generation])

    async def _wait_for_trip(self, trip: list[RunStage], waiter: _Waiter) -> None:
        generation = trip[0].generation
        try:
            with (
                waiter.scope,
                structlog.contextvars.bound_contextvars(generation=generation),
            ):
                log.debug("stages dispatched", stages=[run.stage for run in trip])
                finished = await self._run_trip(trip)
                for run in trip:
                    self._waiters.pop(run.attempt, None)
                # All at once, so that the driver takes them in one turn (and dispatches
                # the stages they free together).
                for result in finished:
                    self.send(result)
        finally:
            self._trips[generation] -= 1
            if not self._trips[generation]:
                del self._trips[generation]

    async def _run_trip(self, trip: list[RunStage]) -> list[StageFinished]:
        """Run the stages of one trip, unless the state store says they are up to date."""
        incremental = self.incremental
        checks: list[Check | None] = [None] * len(trip)
        if incremental is not None:
            checks = await trio.to_thread.run_sync(_prepare, incremental, trip)
        finished: dict[int, StageFinished] = {}
        to_run: list[tuple[RunStage, Check | None]] = []
        for run, check in zip(trip, checks, strict=True):
            if check is not None and not check.decision.run:
                finished[run.attempt] = StageFinished(run.attempt, _skipped(run, check.decision))
            else:
                to_run.append((run, check))
        for run, _ in to_run:
            # Published here, not at dispatch: a stage found up to date never starts.
            self._publish(
                Event(
                    "stage_started",
                    {"stage": run.stage, "generation": run.generation, "run_id": run.run_id},
                )
            )
        requests = [
            RunRequest(run.generation, run.stage, run.spec.params, run_id=run.run_id)
            for run, _ in to_run
        ]
        results = (
            await self.backend.run_batch(requests, stop_on_failure=trip[0].stop_on_failure)
            if requests
            else []
        )
        recorded: list[tuple[StageSpec, Check, StageOutcome]] = []
        for (run, check), result in zip(to_run, results, strict=True):
            outcome = result.outcome
            if check is not None:
                outcome = dataclasses.replace(outcome, reason=check.decision.summary)
                if outcome.status == "ok":
                    recorded.append((run.spec, check, outcome))
            finished[run.attempt] = StageFinished(run.attempt, outcome, result.worker_lost)
        if recorded and incremental is not None:
            # The records name the history's run: let the history catch up first.
            with trio.move_on_after(HISTORY_WAIT_S):
                await self._history_event(trip[0].run_id).wait()
            await trio.to_thread.run_sync(_record_successes, incremental, trip[0].run_id, recorded)
        return [finished[run.attempt] for run in trip]

    async def _pool(self, requests: trio.MemoryReceiveChannel[Promote | Retire]) -> None:
        async for request in requests:
            if isinstance(request, Retire):
                await self.backend.retire(request.generation)
            else:
                log.info("generation promoted", generation=request.generation)

    async def _signals(
        self,
        scope: trio.CancelScope,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            received = 0
            async for signum in signals:
                received += 1
                if received == 1:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    self.stop(0)
                elif signum == signal.SIGINT:
                    self.exit_code = EXIT_INTERRUPTED_TWICE


class _Reply:
    """Where the driver leaves the core's status around one :meth:`Supervisor.request`."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}


class _Waiter:
    """The waiter task of one trip; cancelled once every attempt of it is."""

    def __init__(self, attempts: set[int]) -> None:
        self.scope = trio.CancelScope()
        self._attempts = attempts

    def cancel(self, attempt: int) -> None:
        self._attempts.discard(attempt)
        if not self._attempts:
            self.scope.cancel()


class _Routes:
    """Where the driver sends each kind of action."""

    def __init__(
        self,
        reload: trio.MemorySendChannel[StartGeneration | ReloadInProcess],
        execute: trio.MemorySendChannel[RunStage | CancelAttempts],
        pool: trio.MemorySendChannel[Promote | Retire],
    ) -> None:
        self.reload = reload
        self.execute = execute
        self.pool = pool


def _pending(channel: trio.MemoryReceiveChannel[_T]) -> list[_T]:
    """Whatever else is already waiting in ``channel``, without waiting."""
    found: list[_T] = []
    while True:
        try:
            found.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return found


def _prepare(incremental: Incremental, trip: list[RunStage]) -> list[Check | None]:
    """Each stage's up-to-date check (off the trio thread); None: run it unchecked."""
    try:
        return list(incremental.prepare_many((run.spec, run.force) for run in trip))
    except StateStoreError as exc:
        log.warning("state store unusable; running the stages", error=str(exc))
        return [None] * len(trip)


def _record_successes(
    incremental: Incremental, run_id: int, recorded: list[tuple[StageSpec, Check, StageOutcome]]
) -> None:
    """Record the trip's successes in the state store (off the trio thread)."""
    try:
        incremental.after_successes(recorded, run_id=run_id)
    except StateStoreError as exc:
        stages = [spec.name for spec, _, _ in recorded]
        log.warning("could not record the stages' success", stages=stages, error=str(exc))


def _skipped(request: RunStage, decision: Decision) -> StageOutcome:
    reason = "unchanged"
    if decision.hand_edited:
        edited = ", ".join(repr(p) for p in decision.hand_edited)
        reason += f"; output {edited} was edited by hand and is left alone"
    return StageOutcome(
        stage=request.stage,
        generation=request.generation,
        pid=0,
        status="skipped",
        duration_ms=0.0,
        reason=reason,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
