"""Event sinks: the terminal (one human line per thing that happened) and JSON lines.

Both are pure formatting over :class:`Event`; the tasks that drain a subscription into a
stream are one-liners around them.  ``--json`` prints exactly one object per line on
stdout and nothing else there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TextIO

from ._bus import Subscription
from ._events import Event

INDENT = "    "


def json_line(event: Event) -> str:
    """The ``--json`` line of ``event`` (no trailing newline)."""
    return json.dumps(event.to_json_obj(), default=str, ensure_ascii=True, allow_nan=False)


def human_lines(event: Event, *, show_output: bool = False) -> list[str]:
    """The terminal lines for ``event``; an empty list for events people need not see."""
    render = _RENDERERS.get(event.name)
    return render(event, show_output) if render is not None else []


async def drain(
    subscription: Subscription, stream: TextIO, render: Callable[[Event], list[str]]
) -> None:
    """Write every event of ``subscription`` to ``stream`` until the bus closes."""
    async for event in subscription.events:
        lines = render(event)
        if lines:
            stream.write("\n".join(lines) + "\n")
            stream.flush()


def _started(e: Event, _: bool) -> list[str]:
    mode = (
        f"parallel, up to {e.get('max_workers')} workers"
        if e.get("parallel")
        else "in-process (--no-parallel)"
    )
    verb = "watching" if e.get("watch") else "running"
    return [f"pivot-supervise {verb} {e.get('project')} ({mode}, on error: {e.get('on_error')})"]


def _files_changed(e: Event, _: bool) -> list[str]:
    paths = ", ".join(e.get("paths", []))
    if e.get("kind") == "code":
        return [f"code changed: {paths} -> new generation"]
    stages = ", ".join(e.get("stages", []))
    return [f"data changed: {paths} -> re-run {stages} on the warm workers"]


def _reload_started(e: Event, _: bool) -> list[str]:
    return [f"loading generation {e.get('generation')} ({e.get('trigger')})"]


def _generation_ready(e: Event, _: bool) -> list[str]:
    pids = ", ".join(str(p) for p in e.get("workers", []))
    count = len(e.get("workers", []))
    noun = "worker (pid" if count == 1 else "workers (pids"
    where = f"{count} {noun} {pids})" if pids else "in-process"
    return [
        f"generation {e.get('generation')} ready: {where}, "
        f"{e.get('stages')} stages ({e.get('trigger')})"
    ]


def _reload_failed(e: Event, _: bool) -> list[str]:
    active = e.get("active_generation")
    keeps = (
        f"generation {active} keeps serving the last good pipeline"
        if active is not None
        else "no pipeline is loaded; fix the error and save"
    )
    lines = [f"reload failed ({keeps}): {e.get('error')}"]
    return lines + _indented(e.get("traceback") or "")


def _discarded(e: Event, _: bool) -> list[str]:
    return [f"generation {e.get('generation')} discarded ({e.get('reason')})"]


def _warning(e: Event, _: bool) -> list[str]:
    return [f"warning: {e.get('message')}"]


def _run_started(e: Event, _: bool) -> list[str]:
    return [f"run {e.get('run_id')} ({e.get('trigger')}): {', '.join(e.get('stages', []))}"]


def _stage_started(e: Event, _: bool) -> list[str]:
    return [f"  -> {e.get('stage')} (generation {e.get('generation')})"]


def _stage_finished(e: Event, show_output: bool) -> list[str]:
    status = e.get("status")
    stage = e.get("stage")
    where = f"generation {e.get('generation')}, pid {e.get('pid')}"
    duration = e.get("duration_ms")
    took = f"{duration:.1f} ms" if isinstance(duration, int | float) else ""
    if status == "ok":
        lines = [f"  ok {stage} {took} ({where})"]
    elif status == "failed":
        lines = [f"  FAILED {stage} {took} ({where}): {e.get('error')}"]
        lines += _indented(e.get("traceback") or "")
        show_output = True
    elif status == "cancelled":
        lines = [f"  cancelled {stage}: {e.get('reason')}"]
    else:
        lines = [f"  skipped {stage}: {e.get('reason')}"]
    output: str = e.get("output") or ""
    if show_output and output.strip():
        lines.append(f"  output of {stage}:")
        lines += _indented(output)
    return lines


def _run_finished(e: Event, _: bool) -> list[str]:
    parts = [f"{e.get(k)} {k}" for k in ("ok", "failed", "cancelled", "skipped") if e.get(k)]
    return [f"run {e.get('run_id')} finished: {', '.join(parts) or 'nothing to do'}"]


def _error(e: Event, _: bool) -> list[str]:
    return [f"error: {e.get('message')}"]


def _stopped(e: Event, _: bool) -> list[str]:
    return [f"pivot-supervise stopped (exit code {e.get('exit_code')})"]


def _indented(text: str) -> list[str]:
    return [INDENT + line for line in text.rstrip().splitlines()]


_RENDERERS: dict[str, Callable[[Event, bool], list[str]]] = {
    "supervisor_started": _started,
    "files_changed": _files_changed,
    "reload_started": _reload_started,
    "generation_ready": _generation_ready,
    "reload_failed": _reload_failed,
    "generation_discarded": _discarded,
    "pipeline_warning": _warning,
    "run_started": _run_started,
    "stage_started": _stage_started,
    "stage_finished": _stage_finished,
    "run_finished": _run_finished,
    "error": _error,
    "supervisor_stopped": _stopped,
}

__all__ = ["drain", "human_lines", "json_line"]
