"""Where stages run: one small module per strategy behind :class:`Backend`.

- :mod:`._loky`: a generational pool, one loky executor per generation (the default).
- :mod:`._inline`: ``--no-parallel``, stages run in the supervisor process.
"""

from ._base import Backend, StageResult
from ._inline import InlineBackend
from ._loky import LokyBackend

__all__ = ["Backend", "InlineBackend", "LokyBackend", "StageResult"]
