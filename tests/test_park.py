"""A parked standby: its workers wait in tasks until a load lets them go, one by one.

Real loky workers and a real project: the park's locks and FIFO are the supervisor's,
the park tasks are the workers'.  Whoever parks first is arbitrary, so the tests look at
what happened (who imported the pipeline, which futures are done), not at an order.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import loky
import trio

from conftest import TIMEOUT_S
from pivot_supervise.supervisor.backends._park import Park
from pivot_supervise.supervisor.backends._procs import new_executor
from pivot_supervise.supervisor.backends._scratch import scratch_dir
from pivot_supervise.workers._messages import LoadReply, LoadRequest
from pivot_supervise.workers._tasks import GATE_FILE
from test_standby import RECORDING, imported_by

ProjectFactory = Callable[[Mapping[str, str]], Path]


@contextmanager
def parked(workers: int) -> Iterator[tuple[loky.ProcessPoolExecutor, Park]]:
    executor = new_executor(workers)
    park = Park(scratch_dir("test-park"), workers)
    try:
        park.submit(executor)
        yield executor, park
    finally:
        executor.shutdown(wait=False, kill_workers=True)
        park.close()


def load_request(project: Path) -> LoadRequest:
    """Generation 1's request, its directory made inside the project's temporary dir."""
    directory = project.parent / "generation-1"
    (directory / "running").mkdir(parents=True)
    return LoadRequest(1, str(project), "pipeline.py", "params.toml", str(directory))


async def wait_parked(park: Park) -> None:
    with trio.fail_after(TIMEOUT_S):
        await park.wait_parked()


def first_done(futures: list[concurrent.futures.Future[LoadReply]]) -> LoadReply:
    done, _ = concurrent.futures.wait(
        futures, timeout=TIMEOUT_S, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert done, "no parked worker answered"
    return next(iter(done)).result()


async def test_parked_workers_import_nothing_until_one_is_let_go_to_validate(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    with parked(2) as (_, park):
        await wait_parked(park)
        assert imported_by(project) == set(), "parked workers are free of project code"
        assert not any(future.done() for future in park.futures)

        request = load_request(project)
        # The generation's gate is opened at once (the backend opens it on promotion).
        (Path(request.generation_dir) / GATE_FILE).touch()
        park.start(request)
        validated = first_done(park.futures)
        assert validated.validated and validated.ok, validated.error
        assert imported_by(project) == {validated.pid}
        waiting = [future for future in park.futures if not future.done()]
        assert len(waiting) == 1, "the other worker stays parked until it is let go"

        park.release(1)
        other = waiting[0].result(timeout=TIMEOUT_S)
    assert other.ok and not other.validated, other.error
    assert imported_by(project) == {validated.pid, other.pid}


async def test_a_park_closed_without_a_load_lets_its_workers_go_with_an_error(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    with parked(2) as (_, park):
        await wait_parked(park)
        futures = list(park.futures)
        park.close()
        replies = [future.result(timeout=TIMEOUT_S) for future in futures]
    assert all(not reply.ok for reply in replies)
    assert all(reply.error and "let go without a load" in reply.error for reply in replies)
    assert imported_by(project) == set()
