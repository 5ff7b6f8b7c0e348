"""Supervisor events: what happened, as plain JSON-ready data.

Every sink (the terminal, ``--json`` lines, the WebSocket API) consumes the same
:class:`Event` objects, so what a person reads and what a program parses never drift
apart.  The core creates events without timestamps (it has no clock); the shell stamps
``ts`` when it publishes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The event names a consumer can rely on, in the rough order they happen.
EVENT_NAMES = (
    "supervisor_started",
    "files_changed",
    "reload_started",
    "generation_ready",
    "reload_failed",
    "generation_discarded",
    "pipeline_warning",
    "run_started",
    "stage_started",
    "stage_finished",
    "run_finished",
    "error",
    "supervisor_stopped",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One supervisor event: a name and its JSON-compatible fields."""

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict[str, Any])
    ts: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        """The object printed by ``--json``: ``event`` and ``ts`` first, then the fields."""
        obj: dict[str, Any] = {"event": self.name, "ts": self.ts}
        obj.update(self.fields)
        return obj

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)
