"""The narrow interface between the supervisor's shell and a way of running stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import trio

from ...pipeline._model import StageOutcome
from ...workers._messages import RunRequest
from .._core import GenerationFailed, GenerationLoaded


class StageResult(NamedTuple):
    """A stage's outcome, and whether its generation lost a worker producing it."""

    outcome: StageOutcome
    worker_lost: bool = False


class Backend(Protocol):
    """Loads pipelines into generations and runs stages on them.

    The supervisor's core decides which generation exists, which is active and which
    is retired; a backend only carries that out.  Every method is safe to call from the
    trio thread: whatever blocks runs elsewhere.
    """

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work of the backend (e.g. keeping a standby generation warm).

        Started in the session nursery before the first load, cancelled at its end;
        :meth:`aclose` follows.  A backend with nothing to do in the background just
        reports started and sleeps.
        """
        ...

    async def load(self, generation: int, workers: int) -> GenerationLoaded | GenerationFailed:
        """Bring up ``generation``; answer once the pipeline validated in one of its workers.

        Returns with every worker pid of the generation; the other workers load the
        validated source in the background (never the files as they are by then).
        """
        ...

    async def run(self, request: RunRequest) -> StageResult:
        """Run one stage on ``request.generation``; never raises for a stage's failure."""
        ...

    async def run_batch(
        self, requests: Sequence[RunRequest], *, stop_on_failure: bool
    ) -> list[StageResult]:
        """Run quick stages of one generation in order, in one trip; a result each.

        With ``stop_on_failure`` the stages after a failed one are not started (their
        outcomes say :data:`~pivot_supervise.pipeline._model.NOT_STARTED`).
        """
        ...

    async def retire(self, generation: int) -> None:
        """Stop ``generation`` for good; its running stages are abandoned."""
        ...

    def worker_pids(self, generation: int) -> tuple[int, ...]:
        """The process ids of ``generation``'s workers (empty when none exist)."""
        ...

    async def aclose(self) -> None:
        """Retire everything and make sure no process of ours is left."""
        ...
