"""One worker validates a generation; every other worker runs exactly the code validated.

A generation is promoted after ONE of its workers loaded the pipeline from disk; the
others import the source that worker compiled (the overlay), whenever they get to it.
These tests break the files on disk between the validation and the other workers'
loads, and check that nobody runs the broken or newer code.  The ordering is forced:
at the worker level with our own executors and the generation's gate, at the backend
level with its ``load_gate`` seam.  Real processes, bounded waits, no sleeps.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import loky
import trio
from loky.backend import get_context

from conftest import TIMEOUT_S, assert_gone, children_of, cmdline
from pivot_supervise._config import load_config
from pivot_supervise.pipeline._model import StageOutcome
from pivot_supervise.supervisor.backends import LokyBackend
from pivot_supervise.workers._messages import LoadReply, LoadRequest, RunRequest
from pivot_supervise.workers._overlay import VALIDATED_FILE
from pivot_supervise.workers._tasks import (
    GATE_FILE,
    initialize_worker,
    load_generation,
    run_stage,
)
from test_standby import load, standby_backend

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: Each import of the pipeline appends "<pid> <VALUE>" to imports.log.  The ``show``
#: stage prints the value, then waits until WORKERS stages run at once, so that a
#: batch of WORKERS concurrent ``show`` stages runs on every worker exactly once.  Two
#: stages, so that a backend capped at two workers keeps a standby of two.
PIPELINE = """
    import os
    import time
    from pathlib import Path

    from pivot_supervise import stage

    import value

    WORKERS = 2
    HERE = Path(__file__).parent

    with open(HERE / "imports.log", "a") as log:
        log.write(f"{os.getpid()} {value.VALUE}\\n")

    @stage()
    def show():
        print("value", value.VALUE)
        batch = HERE / "batch"
        batch.mkdir(exist_ok=True)
        (batch / str(os.getpid())).touch()
        deadline = time.monotonic() + 20
        while len(os.listdir(batch)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.005)  # a barrier between worker processes, with a deadline

    @stage()
    def other():
        pass
"""

BROKEN = "VALUE = (\n"


def project_files(value: str) -> dict[str, str]:
    return {"pipeline.py": PIPELINE, "value.py": f'VALUE = "{value}"\n'}


def imports(project: Path) -> list[tuple[int, str]]:
    log = project / "imports.log"
    if not log.exists():
        return []
    return [
        (int(pid), value)
        for pid, value in (line.split() for line in log.read_text().split("\n") if line)
    ]


@contextmanager
def executor_of(workers: int = 1) -> Iterator[loky.ProcessPoolExecutor]:
    executor = loky.ProcessPoolExecutor(
        max_workers=workers,
        context=get_context("loky"),
        initializer=initialize_worker,
        initargs=(os.getpid(),),
    )
    try:
        yield executor
    finally:
        executor.shutdown(wait=False, kill_workers=True)


@contextmanager
def held_gate(directory: Path) -> Iterator[Callable[[], None]]:
    """Hold the generation's gate as the supervisor does; yields its release."""
    fd = os.open(directory / GATE_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            os.close(fd)

    try:
        yield release
    finally:
        release()


def request_for(project: Path, generation: int) -> LoadRequest:
    directory = project.parent / f"generation-{generation}"
    directory.mkdir()
    return LoadRequest(generation, str(project), "pipeline.py", "params.toml", str(directory))


def submit_load(executor: loky.ProcessPoolExecutor, request: LoadRequest) -> LoadReply:
    return executor.submit(load_generation, request).result(timeout=TIMEOUT_S)


def show(executor: loky.ProcessPoolExecutor, request: RunRequest) -> StageOutcome:
    return executor.submit(run_stage, request).result(timeout=TIMEOUT_S)


# ------------------------------------------------------------------ worker level


def test_a_worker_loading_after_the_validation_imports_the_validated_source_not_the_broken_file(
    make_project: ProjectFactory,
) -> None:
    project = make_project(project_files("good"))
    request = request_for(project, 1)
    with held_gate(Path(request.generation_dir)) as release, executor_of() as validator:
        validated = submit_load(validator, request)
        assert validated.validated and validated.ok, validated.error

        (project / "value.py").write_text(BROKEN)
        with executor_of() as other:
            waiting = other.submit(load_generation, request)
            release()
            reply = waiting.result(timeout=TIMEOUT_S)
            assert not reply.validated
            assert reply.ok, reply.error
            assert reply.snapshot == validated.snapshot
            (project / "batch").mkdir()
            for pid in (validated.pid, reply.pid):
                (project / "batch" / str(pid)).touch()  # let show() return at once
            outcome = show(other, RunRequest(1, "show"))
    assert outcome.status == "ok", outcome.error
    assert outcome.output == "value good\n"
    assert imports(project) == [(validated.pid, "good"), (reply.pid, "good")]


def test_a_stage_reaching_a_worker_that_has_not_loaded_runs_the_validated_code(
    make_project: ProjectFactory,
) -> None:
    project = make_project(project_files("good"))
    request = request_for(project, 1)
    with executor_of() as validator:
        assert submit_load(validator, request).ok
    (project / "value.py").write_text('VALUE = "newer"\n')
    (project / "batch").mkdir()
    (project / "batch" / "someone").touch()
    (project / "batch" / "else").touch()

    validated = str(Path(request.generation_dir) / VALIDATED_FILE)
    with executor_of() as fresh:
        first = show(fresh, RunRequest(1, "show", validated=validated))
        # Its load task, arriving after the stage, finds it loaded: no second import.
        late = submit_load(fresh, request)
        second = show(fresh, RunRequest(1, "show", validated=validated))
    assert first.status == "ok", first.error
    assert first.output == second.output == "value good\n"
    assert late.ok and not late.validated and late.pid == first.pid
    assert [pid for pid, _ in imports(project)].count(first.pid) == 1, "loaded once"


def test_when_the_validation_fails_the_other_workers_load_nothing(
    make_project: ProjectFactory,
) -> None:
    project = make_project(project_files("good"))
    (project / "value.py").write_text(BROKEN)
    request = request_for(project, 1)
    with held_gate(Path(request.generation_dir)) as release, executor_of(2) as executor:
        validating, waiting = (executor.submit(load_generation, request) for _ in range(2))
        failed = validating.result(timeout=TIMEOUT_S)
        (project / "value.py").write_text('VALUE = "fixed meanwhile"\n')
        release()
        other = waiting.result(timeout=TIMEOUT_S)
    assert failed.validated and not failed.ok
    assert failed.error is not None and "value.py" in failed.error
    if other.pid != failed.pid:  # the validating worker may have taken both tasks
        assert other.error is not None
        assert f"failed to validate in worker {failed.pid}" in other.error
    assert imports(project) == [], "nobody imported the pipeline"


# ----------------------------------------------------------------- backend level


async def test_every_worker_runs_the_validated_code_although_a_file_broke_before_they_loaded(
    make_project: ProjectFactory,
) -> None:
    project = make_project(project_files("aaaa"))
    at_gate = trio.Event()
    open_gate = trio.Event()

    async def gate(generation: int) -> None:
        if generation == 2:
            at_gate.set()
            await open_gate.wait()

    async with standby_backend(project, max_workers=2, load_gate=gate) as backend:
        await load(backend, 1, 2)
        with trio.fail_after(TIMEOUT_S):
            standby = (await backend.wait_standby()).pids
        (project / "value.py").write_text('VALUE = "bbbb"\n')

        second = await load(backend, 2, 2)
        assert set(second.workers) == set(standby), "promoted with all of its workers"
        with trio.fail_after(TIMEOUT_S):
            await at_gate.wait()
        validated_by = [pid for pid, value in imports(project) if pid in standby]
        assert len(validated_by) == 1, "promoted after one worker loaded"

        (project / "value.py").write_text(BROKEN)  # saved before the others load
        open_gate.set()

        outcomes: list[StageOutcome] = []

        async def run_show() -> None:
            with trio.fail_after(TIMEOUT_S):
                outcomes.append((await backend.run(RunRequest(2, "show"))).outcome)

        async with trio.open_nursery() as nursery:
            for _ in standby:
                nursery.start_soon(run_show)

    assert {o.pid for o in outcomes} == set(standby), "one show per worker"
    for outcome in outcomes:
        assert outcome.status == "ok", outcome.error
        assert outcome.output == "value bbbb\n"
    assert {value for pid, value in imports(project) if pid in standby} == {"bbbb"}


async def test_a_cold_generation_is_promoted_with_every_worker_pid(
    make_project: ProjectFactory,
) -> None:
    project = make_project(project_files("cold"))
    before = children_of(os.getpid())
    backend = LokyBackend(load_config(project), standby=False)
    workers: set[int] = set()
    try:
        loaded = await load(backend, 1, 2)
        workers = {pid for pid in children_of(os.getpid()) - before if "popen_loky" in cmdline(pid)}
        assert set(loaded.workers) == workers
        assert len(loaded.workers) == 2
        assert backend.worker_pids(1) == loaded.workers
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(TIMEOUT_S):
            await backend.aclose()
    await assert_gone(workers)
