"""The API's methods: ``status``, ``stages``, ``run``, ``cancel``, ``restart``, ``explain``
and ``history``.

Each method checks its params (errors name the field), reads the core's state or hands
the core an input through :meth:`Supervisor.request`, which returns once the core has
handled it: so ``run`` answers with the run the stages really joined, and ``cancel``
with the run it really stopped.  ``subscribe`` and ``unsubscribe`` concern a connection,
not the supervisor; the server handles them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from ._core import ON_ERROR_CHOICES, CancelRequested, OnError, RestartRequested, RunRequested
from ._incremental import run_json
from ._rpc import (
    METHOD_NOT_FOUND,
    NOT_READY,
    NOT_SUPERVISED,
    UNKNOWN_STAGE,
    Params,
    Request,
    RpcError,
)

if TYPE_CHECKING:
    from ._supervisor import Supervisor

#: The trigger of runs and restarts asked for through the API, as events show it.
API_TRIGGER = "api"


class Methods:
    """The supervisor-level methods of the API, bound to one supervisor."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._table: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "status": self.status,
            "stages": self.stages,
            "run": self.run,
            "cancel": self.cancel,
            "restart": self.restart,
            "explain": self.explain,
            "history": self.history,
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._table)

    async def call(self, request: Request) -> Any:
        """The result of ``request``; raises :class:`RpcError` for an error response."""
        method = self._table.get(request.method)
        if method is None:
            raise RpcError(METHOD_NOT_FOUND, f"method not found: {request.method[:80]!r}")
        return await method(request)

    # --------------------------------------------------------------- methods

    async def status(self, request: Request) -> dict[str, Any]:
        """``{state, generation, loading_generation, workers, run, last_error, counts}``."""
        Params(request)
        return self.supervisor.core.status()

    async def stages(self, request: Request) -> list[dict[str, Any]]:
        """The active pipeline's stages, in order, with their last result."""
        Params(request)
        return self.supervisor.core.stage_table()

    async def run(self, request: Request) -> dict[str, Any]:
        """Run ``stages`` (default: every supervised stage) and what they need.

        ``force`` runs the requested stages (not what they need) even if they are up
        to date; otherwise an up-to-date stage is reported ``skipped``.  ``on_error``
        overrides the watch's setting for a run this request starts; a request that
        joins the run in progress runs under that run's setting.  Returns ``{run_id,
        stages}``: the run the stages joined (``null`` if there was nothing to run) and
        the stages, in order.
        """
        params = Params(request, ("stages", "force", "on_error"))
        names = params.str_list("stages")
        force = params.bool("force")
        on_error: OnError | None = None
        choice = params.choice("on_error", ON_ERROR_CHOICES)
        if choice in ("fail", "keep-going"):
            on_error = "fail" if choice == "fail" else "keep-going"
        core = self.supervisor.core
        graph, pipeline = core.graph, core.pipeline
        if graph is None or pipeline is None:
            raise RpcError(
                NOT_READY,
                "no pipeline is loaded yet (it is loading, or it failed to load: "
                "see `status`.last_error); fix the pipeline and save it",
            )
        if names is not None:
            unknown = graph.unknown(names)
            if unknown:
                raise RpcError(
                    UNKNOWN_STAGE,
                    unknown_stages_message(unknown, pipeline.names),
                    {"unknown": unknown},
                )
        supervised = _supervised(core.targets, graph.order, graph.upstream_closure, graph.unknown)
        requested = list(names) if names is not None else supervised
        outside = [n for n in requested if n not in supervised]
        if outside:
            raise RpcError(
                NOT_SUPERVISED,
                f"stage {outside[0]!r} is not supervised by this watch (started for "
                f"{', '.join(core.targets or ())} and what they need)",
                {"unsupervised": outside},
            )
        stages = graph.sort(graph.upstream_closure(requested))
        if not stages:
            return {"run_id": None, "stages": []}
        wanted = tuple(names) if names is not None else None
        _, after = await self.supervisor.request(
            RunRequested(
                wanted, on_error=on_error, trigger=API_TRIGGER, force=_forced(force, names)
            )
        )
        run = after["run"]
        return {"run_id": None if run is None else run["id"], "stages": stages}

    async def cancel(self, request: Request) -> dict[str, Any]:
        """Stop the current run now, running stages included; ``{run_id}`` of the run
        that was stopped, ``null`` if none was in progress."""
        Params(request)
        before, _ = await self.supervisor.request(CancelRequested())
        run = before["run"]
        return {"run_id": None if run is None else run["id"]}

    async def restart(self, request: Request) -> dict[str, Any]:
        """A fresh generation now, through the same validate-then-promote path as a
        code change; ``{generation}`` being loaded (if one was loading already, a fresh
        one follows it)."""
        Params(request)
        _, after = await self.supervisor.request(RestartRequested("restart"))
        return {"generation": after["loading_generation"]}

    async def explain(self, request: Request) -> list[dict[str, Any]]:
        """For each stage (``stages``, default all, with what they need): whether it
        would run now and why: ``[{stage, would_run, reasons, hand_edited}]``."""
        params = Params(request, ("stages",))
        names = params.str_list("stages")
        core = self.supervisor.core
        graph, pipeline = core.graph, core.pipeline
        incremental = self.supervisor.incremental
        if graph is None or pipeline is None:
            raise RpcError(NOT_READY, "no pipeline is loaded yet; see `status`.last_error")
        if incremental is None:
            raise RpcError(NOT_READY, "incremental runs are off: there is no state to explain")
        if names is not None and graph.unknown(names):
            unknown = graph.unknown(names)
            raise RpcError(
                UNKNOWN_STAGE, unknown_stages_message(unknown, pipeline.names), {"unknown": unknown}
            )
        wanted = graph.sort(graph.upstream_closure(names) if names is not None else graph.order)
        specs = [pipeline[name] for name in wanted]
        checks = await trio.to_thread.run_sync(lambda: [incremental.check(s) for s in specs])
        return [
            {
                "stage": spec.name,
                "would_run": check.decision.run,
                "reasons": list(check.decision.reasons),
                "hand_edited": list(check.decision.hand_edited),
            }
            for spec, check in zip(specs, checks, strict=True)
        ]

    async def history(self, request: Request) -> list[dict[str, Any]]:
        """The latest runs, newest first (``limit``, default 20; ``stage`` to filter)."""
        params = Params(request, ("stage", "limit"))
        stage = params.string("stage")
        limit = params.integer("limit", 20, 1, 10_000)
        incremental = self.supervisor.incremental
        if incremental is None:
            raise RpcError(NOT_READY, "incremental runs are off: no history is kept")
        runs = await trio.to_thread.run_sync(lambda: incremental.store.history(stage, limit))
        return [run_json(run) for run in runs]


def _forced(force: bool, names: list[str] | None) -> bool | frozenset[str]:
    """What ``force`` means for the core: the named stages only, or (no names) all."""
    if not force:
        return False
    return frozenset(names) if names is not None else True


def unknown_stages_message(unknown: Sequence[str], known: Sequence[str]) -> str:
    names = ", ".join(repr(u[:80]) for u in unknown[:5])
    if len(unknown) > 5:
        names += f" (and {len(unknown) - 5} more)"
    plural = "stages" if len(unknown) > 1 else "stage"
    listing = ", ".join(known) if known else "(none)"
    return f"unknown {plural} {names}; the pipeline defines: {listing}"


def _supervised(
    targets: tuple[str, ...] | None,
    order: Sequence[str],
    closure: Callable[[Sequence[str]], frozenset[str]],
    unknown: Callable[[Sequence[str]], list[str]],
) -> list[str]:
    """The stages a watch looks after: all, or its targets and what they need."""
    if targets is None:
        return list(order)
    missing = set(unknown(targets))
    wanted = closure([t for t in targets if t not in missing])
    return [name for name in order if name in wanted]
