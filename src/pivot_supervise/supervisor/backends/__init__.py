"""Where stages run: one small module per strategy behind :class:`Backend`.

- :mod:`._loky`: a generational pool, one loky executor per generation (the default).
- :mod:`._standby`: the loky backend's standby generation (workers started ahead).
- :mod:`._inline`: ``--no-parallel``, stages run in the supervisor process.
"""

from ._base import Backend, StageResult
from ._inline import InlineBackend
from ._loky import (
    LoadGate,
    LokyBackend,
    ReadyStandby,
    StandbyUnavailable,
    release_process_resources,
)

__all__ = [
    "Backend",
    "InlineBackend",
    "LoadGate",
    "LokyBackend",
    "ReadyStandby",
    "StageResult",
    "StandbyUnavailable",
    "release_process_resources",
]
