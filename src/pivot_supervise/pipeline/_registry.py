"""Where ``@stage`` writes down what it saw.

The decorator runs while the user's pipeline module is being imported, inside a worker.
It cannot build the graph there and then (more stages are still to come, maybe from
other modules), so it only records a :class:`Registration`; the loader reads them all
once the import finished and turns them into validated plain data.

The registry is process-global on purpose: a worker of a generation imports the
pipeline exactly once, into a fresh interpreter, so there is nothing to share it with.
Tests and the loader call :meth:`StageRegistry.clear` before an import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Registration:
    """One ``@stage(...)`` application, before any validation of its paths.

    ``deps`` and ``outs`` are the declared paths as strings (``os.fspath`` of what the
    user wrote), not yet normalised: normalising needs the project root and produces
    errors that belong to the loader, not to the decorator.
    """

    name: str
    func: Callable[..., Any]
    module: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]


class StageRegistry:
    """An append-only list of registrations, in the order the decorators ran.

    Duplicate names are kept: rejecting them here would blame whichever module happened
    to be imported second, while the validator can name both.
    """

    __slots__ = ("_registrations",)

    def __init__(self) -> None:
        self._registrations: list[Registration] = []

    def record(self, registration: Registration) -> None:
        self._registrations.append(registration)

    def clear(self) -> None:
        self._registrations.clear()

    def registrations(self) -> tuple[Registration, ...]:
        return tuple(self._registrations)

    def __len__(self) -> int:
        return len(self._registrations)


#: The registry ``@stage`` records into.
REGISTRY = StageRegistry()
