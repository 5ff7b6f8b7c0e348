# Minimal type stubs for the parts of loky that pivot-supervise uses (loky ships none).
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from .process_executor import BrokenProcessPool as BrokenProcessPool
from .process_executor import ShutdownExecutorError as ShutdownExecutorError
from .process_executor import TerminatedWorkerError as TerminatedWorkerError

_P = ParamSpec("_P")
_T = TypeVar("_T")

class ProcessPoolExecutor(Executor):
    def __init__(
        self,
        max_workers: int | None = None,
        job_reducers: Any = None,
        result_reducers: Any = None,
        timeout: float | None = None,
        context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None: ...
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]: ...
    def shutdown(self, wait: bool = True, kill_workers: bool = False) -> None: ...  # type: ignore[override]

def cpu_count(only_physical_cores: bool = False) -> int: ...
