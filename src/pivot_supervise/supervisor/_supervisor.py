"""The supervision tree: thin trio tasks around the sans-IO core.

::

    Supervisor.run
     |- signals        SIGINT / SIGTERM -> graceful stop (a second SIGINT: exit 130)
     |- sinks          terminal / JSON lines, fed by the event bus
     '- session
         |- driver     inbox -> core.handle -> actions routed to the tasks below
         |- watcher    watchfiles -> FilesChanged            (watch mode only)
         |- reloader   StartGeneration -> backend.load -> GenerationLoaded / Failed
         |- executor   RunStage -> backend.run -> StageFinished (one waiter per stage)
         '- pool       Retire -> backend.retire (off the trio thread)

Every task only does I/O; what to do is decided by :class:`SupervisorCore`.  Channels
between the driver and the tasks are unbounded so that the driver never waits on a
task that is itself waiting to hand the driver an input.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import loky
import structlog
import trio

from ..workers._messages import RunRequest
from ._bus import EventBus
from ._config import Config
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
from ._watcher import ProjectWatcher
from .backends import Backend, InlineBackend, LokyBackend

log = structlog.get_logger("pivot_supervise.supervisor")

#: A task that lives in the session nursery beside the supervisor's own (e.g. the API
#: server): started with ``nursery.start(service, supervisor)``, cancelled at the end.
Service = Callable[["Supervisor", trio.TaskStatus[None]], Awaitable[None]]

#: Exit code after a second Ctrl-C, as shells report death by SIGINT.
EXIT_INTERRUPTED_TWICE = 130
#: How long shutting the workers down may take before we stop waiting politely.
SHUTDOWN_TIMEOUT_S = 4.0


def make_backend(config: Config, options: RunOptions) -> Backend:
    return LokyBackend(config) if options.parallel else InlineBackend(config)


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
    ) -> None:
        self.config = config
        self.options = options
        self.targets = targets
        self.watch = watch
        self.backend = backend if backend is not None else make_backend(config, options)
        self.core = SupervisorCore(cpu_count=cpu_count or loky.cpu_count(), watch=watch)
        self.bus = EventBus()
        self.exit_code: int | None = None
        self.started = trio.Event()
        self._handle_signals = handle_signals
        self._inbox_send, self._inbox = trio.open_memory_channel[Input](math.inf)
        self._session_scope = trio.CancelScope()
        self._waiters: dict[int, trio.CancelScope] = {}
        self._watcher = ProjectWatcher(config) if watch else None
        self._services = tuple(services)

    # ---------------------------------------------------------------- controls

    def send(self, event: Input) -> None:
        """Hand the core an input (from the trio thread)."""
        self._inbox_send.send_nowait(event)

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
            if self._handle_signals:
                await outer.start(self._signals)
            try:
                await self._session()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT_S):
                    await self.backend.aclose()
                if self.exit_code is None:
                    self.exit_code = 0
                self._publish(Event("supervisor_stopped", {"exit_code": self.exit_code}))
                self.bus.close()
                outer.cancel_scope.cancel()
        assert self.exit_code is not None
        return self.exit_code

    async def _session(self) -> None:
        reload_send, reload_recv = trio.open_memory_channel[StartGeneration | ReloadInProcess](
            math.inf
        )
        exec_send, exec_recv = trio.open_memory_channel[RunStage | CancelAttempts](math.inf)
        pool_send, pool_recv = trio.open_memory_channel[Promote | Retire](math.inf)
        routes = _Routes(reload_send, exec_send, pool_send)
        with self._session_scope:
            async with trio.open_nursery() as nursery:
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
                self.send(RunRequested(self.targets, self.options, trigger="start"))
                self.started.set()
                await self._driver(routes)

    async def _driver(self, routes: _Routes) -> None:
        async for event in self._inbox:
            for action in self.core.handle(event):
                self._apply(action, routes)

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
        async with trio.open_nursery() as waiters:
            async for request in requests:
                if isinstance(request, CancelAttempts):
                    for attempt in request.attempts:
                        scope = self._waiters.pop(attempt, None)
                        if scope is not None:
                            scope.cancel()
                    continue
                scope = trio.CancelScope()
                self._waiters[request.attempt] = scope
                waiters.start_soon(self._wait_for_stage, request, scope)

    async def _wait_for_stage(self, request: RunStage, scope: trio.CancelScope) -> None:
        with (
            scope,
            structlog.contextvars.bound_contextvars(
                generation=request.generation, stage=request.stage
            ),
        ):
            log.debug("stage dispatched", attempt=request.attempt)
            result = await self.backend.run(
                RunRequest(request.generation, request.stage, request.params)
            )
            self._waiters.pop(request.attempt, None)
            self.send(StageFinished(request.attempt, result.outcome, result.worker_lost))

    async def _pool(self, requests: trio.MemoryReceiveChannel[Promote | Retire]) -> None:
        async for request in requests:
            if isinstance(request, Retire):
                await self.backend.retire(request.generation)
            else:
                log.info("generation promoted", generation=request.generation)

    async def _signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            received = 0
            async for signum in signals:
                received += 1
                if received == 1:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    self.stop(0)
                elif signum == signal.SIGINT:
                    self.exit_code = EXIT_INTERRUPTED_TWICE


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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
