"""Standby generations: workers started ahead of time, and every guarantee kept.

The loky backend is driven directly (with its ``serve`` task running, as in a session)
where the test is about the standby itself, and through a real supervisor where it is
about what a user sees.  Waits are bounded; no sleeps; every process is checked gone.
"""

from __future__ import annotations

import os
import py_compile
import signal
import textwrap
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from importlib.util import cache_from_source
from pathlib import Path

import pytest
import trio

from conftest import (
    TIMEOUT_S,
    CliProcess,
    assert_gone,
    children_of,
    cli,
    cmdline,
    kill_survivors,
    named,
    serving_backend,
    supervising,
    wait_gone_blocking,
)
from pivot_supervise.supervisor._core import GenerationFailed, GenerationLoaded
from pivot_supervise.supervisor.backends import LoadGate, LokyBackend, StandbyUnavailable
from pivot_supervise.supervisor.backends._loky import LOADERS_GRACE_S
from pivot_supervise.supervisor.backends._scratch import sweep_abandoned
from pivot_supervise.workers._messages import RunRequest

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: The pipeline appends its pid to imports.log each time a process imports it.
RECORDING = {
    "pipeline.py": """
        import os
        from pathlib import Path

        from pivot_supervise import stage

        import value

        with open(Path(__file__).with_name("imports.log"), "a") as log:
            log.write(f"{os.getpid()}\\n")

        @stage()
        def show():
            print("value", value.VALUE)
    """,
    "value.py": 'VALUE = "aaaa"\n',
}


#: Three stages; ``waits`` finishes only once ``signals`` ran, which takes two workers.
WAITING = {
    "pipeline.py": """
        import os
        import time
        from pathlib import Path

        from pivot_supervise import stage

        HERE = Path(__file__).parent
        with open(HERE / "imports.log", "a") as log:
            log.write(f"{os.getpid()}\\n")

        @stage()
        def quick():
            pass

        @stage()
        def waits():
            (HERE / "waiting").touch()
            deadline = time.monotonic() + 60
            while not (HERE / "signal").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("'signals' never ran")
                time.sleep(0.005)

        @stage()
        def signals():
            (HERE / "signal").touch()
    """,
}

#: Long enough that no promoted standby's workers load for want of a first stage.
NEVER_S = 3600.0


def imported_by(project: Path) -> set[int]:
    log = project / "imports.log"
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


def standby_backend(
    project: Path,
    max_workers: int | None = None,
    load_gate: LoadGate | None = None,
    loaders_grace_s: float = LOADERS_GRACE_S,
) -> AbstractAsyncContextManager[LokyBackend]:
    """A loky backend with standby on and its service running; all processes gone after."""
    return serving_backend(
        project,
        standby=True,
        max_workers=max_workers,
        load_gate=load_gate,
        loaders_grace_s=loaders_grace_s,
    )


async def load(backend: LokyBackend, generation: int, workers: int) -> GenerationLoaded:
    with trio.fail_after(TIMEOUT_S):
        result = await backend.load(generation, workers)
    assert isinstance(result, GenerationLoaded), result
    return result


async def ready_standby(backend: LokyBackend) -> tuple[int, ...]:
    with trio.fail_after(TIMEOUT_S):
        return (await backend.wait_standby()).pids


async def test_a_standby_never_imports_project_code_and_becomes_the_next_generation(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    async with standby_backend(project, max_workers=1) as backend:
        first = await load(backend, 1, 1)
        standby = await ready_standby(backend)

        assert not set(standby) & set(first.workers), "a standby is made of new processes"
        assert not set(standby) & imported_by(project), "the standby imported the pipeline"

        second = await load(backend, 2, 1)
        assert set(second.workers) == set(standby), "the load took the ready standby"
        assert set(standby) <= imported_by(project), "the pipeline loaded in it at promotion"

        refilled = await ready_standby(backend)
        assert not set(refilled) & (set(first.workers) | set(standby))


async def promoted_standby(backend: LokyBackend, workers: int) -> tuple[int, ...]:
    """Generation 1 cold, then generation 2 from the standby; the standby's pids."""
    await load(backend, 1, workers)
    standby = await ready_standby(backend)
    second = await load(backend, 2, workers)
    assert set(second.workers) == set(standby), "the load took the ready standby"
    return standby


async def wait_imported(project: Path, pids: tuple[int, ...]) -> None:
    with trio.fail_after(TIMEOUT_S):
        while not set(pids) <= imported_by(project):
            await trio.sleep(0.01)


async def test_a_promoted_standby_loads_its_other_workers_once_its_first_stage_answered(
    make_project: ProjectFactory,
) -> None:
    project = make_project(WAITING)
    async with standby_backend(project, max_workers=3, loaders_grace_s=NEVER_S) as backend:
        standby = await promoted_standby(backend, 3)
        assert len(imported_by(project) & set(standby)) == 1, (
            "only the validating worker may load before the first stage: the others "
            "would take CPU from it"
        )
        with trio.fail_after(TIMEOUT_S):
            outcome = (await backend.run(RunRequest(2, "quick"))).outcome
        assert outcome.status == "ok", outcome.error
        await wait_imported(project, standby)


async def test_a_promoted_standby_loads_its_other_workers_at_once_when_work_waits(
    make_project: ProjectFactory,
) -> None:
    project = make_project(WAITING)
    async with standby_backend(project, max_workers=3, loaders_grace_s=NEVER_S) as backend:
        await promoted_standby(backend, 3)
        outcomes: dict[str, str] = {}

        async def run(stage: str) -> None:
            outcomes[stage] = (await backend.run(RunRequest(2, stage))).outcome.status

        with trio.fail_after(TIMEOUT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "waits")  # holds the validating worker
                while not (project / "waiting").exists():
                    await trio.sleep(0.01)
                nursery.start_soon(run, "signals")  # needs a second worker to load
        assert outcomes == {"waits": "ok", "signals": "ok"}


async def test_a_promoted_standby_loads_its_other_workers_after_a_grace_without_stages(
    make_project: ProjectFactory,
) -> None:
    project = make_project(WAITING)
    async with standby_backend(project, max_workers=3, loaders_grace_s=0.0) as backend:
        standby = await promoted_standby(backend, 3)
        await wait_imported(project, standby)


async def test_a_standby_in_which_the_load_failed_is_thrown_away(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    async with standby_backend(project, max_workers=1) as backend:
        await load(backend, 1, 1)
        consumed = await ready_standby(backend)

        (project / "value.py").write_text("VALUE = (\n")
        with trio.fail_after(TIMEOUT_S):
            failed = await backend.load(2, 1)
        assert isinstance(failed, GenerationFailed)
        assert "value.py" in failed.error
        assert set(backend.worker_pids(2)) == set(consumed), "the failed load used the standby"
        await backend.retire(2)  # what the core does with a failed generation
        await assert_gone(consumed)

        (project / "value.py").write_text('VALUE = "fixed"\n')
        replacement = await ready_standby(backend)
        assert not set(replacement) & set(consumed)
        third = await load(backend, 3, 1)
        assert set(third.workers) == set(replacement)


async def test_a_standby_that_lost_a_worker_is_never_promoted(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    async with standby_backend(project, max_workers=2) as backend:
        await load(backend, 1, 1)
        pipeline = project / "pipeline.py"
        pipeline.write_text(pipeline.read_text() + "\n@stage()\ndef other():\n    pass\n")
        await load(backend, 2, 1)
        standby = await ready_standby(backend)
        assert len(standby) == 2

        os.kill(standby[0], signal.SIGKILL)
        await assert_gone(standby[:1])
        third = await load(backend, 3, 2)
        assert not set(third.workers) & set(standby), "a cold start, not the broken standby"
        with trio.fail_after(TIMEOUT_S):
            outcome = (await backend.run(RunRequest(3, "show"))).outcome
        assert outcome.status == "ok", outcome.error


async def test_a_standby_of_the_wrong_size_is_rebuilt_when_the_stage_count_changes(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    async with standby_backend(project, max_workers=2) as backend:
        await load(backend, 1, 1)
        assert len(await ready_standby(backend)) == 1, "one stage: one worker"

        pipeline = project / "pipeline.py"
        pipeline.write_text(pipeline.read_text() + "\n@stage()\ndef other():\n    print('other')\n")
        second = await load(backend, 2, 1)  # sized by the old stage count
        assert len(second.snapshot) == 2
        resized = await ready_standby(backend)
        assert len(resized) == 2, "the standby follows the new stage count"
        third = await load(backend, 3, 2)
        assert set(third.workers) == set(resized)


async def test_preload_imports_modules_at_worker_start_and_project_code_there_is_refused(
    make_project: ProjectFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(
        {
            **RECORDING,
            "pivot-supervise.toml": 'preload = ["colorsys"]\n',
        }
    )
    (project / "pipeline.py").write_text(
        textwrap.dedent(
            """
            import sys
            from pivot_supervise import stage

            @stage()
            def check():
                print("colorsys" in sys.modules)
            """
        )
    )
    async with standby_backend(project, max_workers=1) as backend:
        await load(backend, 1, 1)
        await ready_standby(backend)
        await load(backend, 2, 1)
        with trio.fail_after(TIMEOUT_S):
            outcome = (await backend.run(RunRequest(2, "check"))).outcome
        assert outcome.status == "ok"
        assert outcome.output.strip() == "True"

    # A preload that is project code (importable because the root is on sys.path,
    # which workers inherit) taints every standby: none is ever promoted.
    tainted = make_project({**RECORDING, "pivot-supervise.toml": 'preload = ["value"]\n'})
    monkeypatch.syspath_prepend(str(tainted))
    async with standby_backend(tainted, max_workers=1) as backend:
        first = await load(backend, 1, 1)
        with trio.fail_after(TIMEOUT_S), pytest.raises(StandbyUnavailable, match="value"):
            await backend.wait_standby()
        second = await load(backend, 2, 1)  # a cold start, still correct
        assert not set(second.workers) & set(first.workers)


async def test_an_edit_after_a_standby_promotion_runs_as_saved_even_against_a_fresh_looking_pyc(
    make_project: ProjectFactory,
) -> None:
    project = make_project(RECORDING)
    value = project / "value.py"
    async with supervising(project, max_workers=1) as session:
        events = session.events
        await events.wait_for(named("stage_finished", stage="show", status="ok"))
        seen_pids = set(events.worker_pids())
        for new in ("bbbb", "cccc"):
            assert isinstance(session.supervisor.backend, LokyBackend)
            with trio.fail_after(TIMEOUT_S):
                await session.supervisor.backend.wait_standby()
            # Same size, same mtime, and a .pyc of the OLD source that looks fresh.
            stat = value.stat()
            py_compile.compile(str(value), cfile=cache_from_source(str(value)))
            value.write_text(f'VALUE = "{new}"\n')
            os.utime(value, ns=(stat.st_atime_ns, stat.st_mtime_ns))

            ready = await events.wait_for(named("generation_ready", trigger="code change"))
            finished = await events.wait_for(named("stage_finished", stage="show"))
            assert finished.get("status") == "ok", finished.fields
            assert f"value {new}" in finished.get("output"), finished.fields
            assert not set(ready.get("workers")) & seen_pids, "new processes per generation"
            seen_pids |= set(ready.get("workers"))


def test_standby_workers_exit_when_the_supervisor_is_sigkilled(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    project = make_project(RECORDING)
    with cli(
        ["watch", "--json", "--no-server", "--project", str(project), "-j", "1"], tmp_path
    ) as process:
        process.wait_for("run_finished")
        active = process.worker_pids()
        standby = _wait_for_standby_workers(process, active)

        os.kill(process.proc.pid, signal.SIGKILL)
        process.proc.wait(timeout=TIMEOUT_S)
        left = wait_gone_blocking(active | standby)
        kill_survivors(left)
        assert not left, f"workers outlived their SIGKILLed supervisor: {left}"
    # Its scratch directories (generation, standby park) stayed behind; the next
    # backend to start removes them.
    abandoned = {p.name for p in sweep_abandoned()}
    assert any(name.startswith(f"pivot-supervise-{process.proc.pid}-g") for name in abandoned)


def _wait_for_standby_workers(process: CliProcess, active: set[int]) -> set[int]:
    """The supervisor's loky workers that are not the active generation's."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        workers = {
            pid
            for pid in children_of(process.proc.pid)
            if "popen_loky" in cmdline(pid) and pid not in active
        }
        if workers:
            return workers
        time.sleep(0.02)  # polling a process table, with a deadline
    raise AssertionError(f"no standby worker appeared; stderr:\n{process.stderr()}")
