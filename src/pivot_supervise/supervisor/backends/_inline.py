"""``--no-parallel``: stages run in the supervisor process, one at a time.

There is no pool, so nothing is ever restarted: a reload drops the project's modules
from ``sys.modules`` and imports the pipeline again (from source, never a stale
``.pyc``).  Loading and running happen on a trio worker thread so the supervisor keeps
watching while a stage runs.  A stage's prints are routed to its own buffer by thread;
output written straight to file descriptors by C code or subprocesses is not captured
in this mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import trio

from ..._config import Config, ConfigError, pipeline_files
from ...pipeline._model import StageOutcome, failed_before_running, not_started
from ...workers._loader import LoadedPipeline, PipelineLoadError, load_pipeline
from ...workers._messages import RunRequest
from ...workers._runner import execute_stage
from .._core import GenerationFailed, GenerationLoaded
from ._base import StageResult


class InlineBackend:
    """Runs stages in this process; each "generation" is one import of the pipeline."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._root = config.project_root.resolve()
        self._loaded: dict[int, LoadedPipeline] = {}

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background without a pool."""
        task_status.started()
        await trio.sleep_forever()

    async def load(self, generation: int, workers: int) -> GenerationLoaded | GenerationFailed:
        def load() -> LoadedPipeline:
            pipeline_file, params_file = pipeline_files(self._root)
            # Stages run with the project root as working directory, as in a worker.
            os.chdir(self._root)
            return load_pipeline(self._root, pipeline_file, params_file)

        try:
            loaded = await trio.to_thread.run_sync(load)
        except ConfigError as exc:
            return GenerationFailed(generation, f"configuration: {exc}")
        except PipelineLoadError as exc:
            return GenerationFailed(generation, exc.message, exc.traceback)
        self._loaded[generation] = loaded
        return GenerationLoaded(generation, loaded.snapshot, ())

    async def run(self, request: RunRequest) -> StageResult:
        loaded = self._loaded.get(request.generation)
        if loaded is None:
            return StageResult(_retired(request))
        run = partial(
            execute_stage,
            loaded,
            request.stage,
            request.generation,
            request.params,
            self._root,
            capture="thread",
        )
        return StageResult(await trio.to_thread.run_sync(run, abandon_on_cancel=True))

    async def run_batch(
        self, requests: Sequence[RunRequest], *, stop_on_failure: bool
    ) -> list[StageResult]:
        """One after the other (in-process, the core never has two stages in flight)."""
        results: list[StageResult] = []
        failed: str | None = None
        for request in requests:
            if failed is not None:
                results.append(StageResult(not_started(request.stage, request.generation, failed)))
                continue
            result = await self.run(request)
            results.append(result)
            if result.outcome.status == "failed" and stop_on_failure:
                failed = request.stage
        return results

    async def retire(self, generation: int) -> None:
        self._loaded.pop(generation, None)

    def worker_pids(self, generation: int) -> tuple[int, ...]:
        return ()

    async def aclose(self) -> None:
        self._loaded.clear()


def _retired(request: RunRequest) -> StageOutcome:
    error = f"generation {request.generation} was retired before the stage could start"
    return failed_before_running(request.stage, request.generation, error, pid=os.getpid())


__all__ = ["InlineBackend"]
