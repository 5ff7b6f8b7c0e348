"""The worker tasks in real loky worker processes.

Each test owns its executors and shuts them down with ``kill_workers=True``.  These are
the behaviours the supervisor builds on: fresh code in every generation (even against a
``.pyc`` that looks fresh), one load task per worker, results that carry their pid,
workers that die with their supervisor, and how loky reports a worker that crashed.
"""

from __future__ import annotations

import json
import os
import py_compile
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.util import cache_from_source
from pathlib import Path

import loky
import pytest
from loky.backend import get_context
from loky.process_executor import TerminatedWorkerError

from pivot_supervise._state_dir import STATE_DIR
from pivot_supervise.pipeline._model import StageOutcome
from pivot_supervise.workers._fingerprint import ReplayStats, fingerprint_stages, open_code_cache
from pivot_supervise.workers._loader import load_pipeline
from pivot_supervise.workers._tasks import (
    LoadReply,
    LoadRequest,
    RunRequest,
    _stop_run,
    _stopped_by,
    initialize_worker,
    load_generation,
    ping,
    run_stage,
)

TIMEOUT_S = 20.0

PIPELINE = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from pivot_supervise.pipeline._stage import stage

    import value

    @stage(outs=["out.txt"])
    def produce():
        print("producing", value.VALUE)
        Path("out.txt").write_text(value.VALUE)

    @stage()
    def crash():
        os._exit(3)
    """
)


@contextmanager
def generation(
    workers: int = 1, env: Mapping[str, str] | None = None
) -> Iterator[loky.ProcessPoolExecutor]:
    executor = loky.ProcessPoolExecutor(
        max_workers=workers,
        context=get_context("loky"),
        initializer=initialize_worker,
        initargs=(os.getpid(),),
        env=dict(env) if env is not None else None,
    )
    try:
        yield executor
    finally:
        executor.shutdown(wait=False, kill_workers=True)


def load_request(root: Path, number: int) -> LoadRequest:
    directory = root.parent / f"generation-{root.name}-{number}"
    directory.mkdir(exist_ok=True)
    return LoadRequest(
        generation=number,
        project_root=str(root),
        pipeline_file="pipeline.py",
        params_file="params.toml",
        generation_dir=str(directory),
    )


def load(executor: loky.ProcessPoolExecutor, root: Path, number: int) -> LoadReply:
    """Validate generation ``number`` in ``executor``'s (one) worker."""
    reply = executor.submit(load_generation, load_request(root, number)).result(timeout=TIMEOUT_S)
    assert reply.error is None, f"{reply.error}\n{reply.traceback}"
    assert reply.validated
    return reply


def run(executor: loky.ProcessPoolExecutor, number: int, stage: str) -> StageOutcome:
    future = executor.submit(run_stage, RunRequest(generation=number, stage=stage))
    return future.result(timeout=TIMEOUT_S)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pipeline.py").write_text(PIPELINE)
    (root / "value.py").write_text('VALUE = "A"\n')
    return root


def make_stale_pyc_look_fresh(module: Path, new_text: str) -> None:
    """Rewrite ``module`` at the same size and mtime as before, over a pyc of the old text.

    That is exactly what a quick same-length edit within one second looks like to the
    pyc validity check (whole-second mtime plus size).
    """
    py_compile.compile(str(module), cfile=cache_from_source(str(module)), doraise=True)
    before = module.stat()
    assert len(new_text.encode()) == before.st_size
    module.write_text(new_text)
    os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize(
    "dont_write_bytecode", [None, "0"], ids=["PYTHONDONTWRITEBYTECODE-unset", "set-to-0"]
)
def test_a_new_generation_runs_the_code_as_saved_despite_a_fresh_looking_pyc(
    project: Path, monkeypatch: pytest.MonkeyPatch, dont_write_bytecode: str | None
) -> None:
    # The environment this relies on, explicitly: some shells here export it as "1".
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    env = None if dont_write_bytecode is None else {"PYTHONDONTWRITEBYTECODE": "0"}

    with generation(env=env) as executor:
        load(executor, project, 1)
        assert run(executor, 1, "produce").status == "ok"
    assert (project / "out.txt").read_text() == "A"

    make_stale_pyc_look_fresh(project / "value.py", 'VALUE = "B"\n')
    # Control: a plain fresh interpreter does import the stale pyc, so this test bites.
    plain = subprocess.run(
        [sys.executable, "-c", "import value; print(value.VALUE)"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
        env={**os.environ, **(env or {})},
    )
    assert plain.stdout.strip() == "A"

    with generation(env=env) as executor:
        load(executor, project, 2)
        outcome = run(executor, 2, "produce")
    assert outcome.status == "ok", outcome.error
    assert outcome.output == "producing B\n"
    assert (project / "out.txt").read_text() == "B"


def test_ping_answers_with_the_pid_of_whoever_runs_it() -> None:
    assert ping() == os.getpid()


def frozen_objects() -> int:
    """How many objects this worker's heap keeps out of full collections."""
    import gc

    return gc.get_freeze_count()


def test_a_loaded_worker_keeps_what_it_loaded_out_of_full_collections(project: Path) -> None:
    # loky runs gc.collect() after the load task of a worker idle for a second (no
    # psutil): with the pipeline frozen, that collection stays short.
    with generation() as executor:
        before = executor.submit(frozen_objects).result(timeout=TIMEOUT_S)
        load(executor, project, 1)
        after = executor.submit(frozen_objects).result(timeout=TIMEOUT_S)
    assert before == 0
    assert after > 1000, "the modules and the pipeline the worker loaded are frozen"


def saves_done() -> bool:
    """Wait in a worker for the code cache writes it runs behind its replies."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "pivot-supervise-cache-save":
            thread.join(TIMEOUT_S)
            if thread.is_alive():
                return False
    return True


def holds_a_cache() -> bool:
    """Whether this worker's loaded pipeline still holds the code cache of its load."""
    from pivot_supervise.workers._tasks import _Process

    state = _Process.state
    return state is not None and state.loaded is not None and state.loaded.unsaved_cache is not None


def test_the_validating_worker_writes_the_code_cache_after_it_answered(project: Path) -> None:
    with generation() as executor:
        load(executor, project, 1)
        assert executor.submit(saves_done).result(timeout=TIMEOUT_S), "the save never ended"
        assert not executor.submit(holds_a_cache).result(timeout=TIMEOUT_S)
    cache = open_code_cache(project / STATE_DIR)
    assert cache.graph is not None, "no cache file, or one without the walk of the graph"
    stats = ReplayStats()
    loaded = load_pipeline(project, "pipeline.py", "params.toml", fingerprints=False)
    fingerprint_stages(loaded.functions, project, modules=loaded.modules, cache=cache, stats=stats)
    assert stats.replayed, "the worker's walk of the graph was not replayed"


def test_a_load_failure_is_a_reply_not_an_exception(project: Path) -> None:
    (project / "pipeline.py").write_text("import nowhere_to_be_found\n")
    with generation() as executor:
        request = load_request(project, 1)
        reply = executor.submit(load_generation, request).result(timeout=TIMEOUT_S)
        assert reply.snapshot is None
        assert reply.error == (
            "ModuleNotFoundError in pipeline.py line 1: No module named 'nowhere_to_be_found'"
        )
        outcome = run(executor, 1, "produce")
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "failed to load the pipeline" in outcome.error


def test_a_stage_of_another_generation_is_refused(project: Path) -> None:
    with generation() as executor:
        load(executor, project, 1)
        outcome = run(executor, 2, "produce")
    assert outcome.status == "failed"
    assert outcome.error == (
        "cannot run stage 'produce' of generation 2: this worker belongs to generation 1"
    )


def test_a_worker_that_dies_mid_stage_fails_its_future_with_terminated_worker_error(
    project: Path,
) -> None:
    with generation() as executor:
        load(executor, project, 1)
        future = executor.submit(run_stage, RunRequest(generation=1, stage="crash"))
        with pytest.raises(TerminatedWorkerError):
            future.result(timeout=TIMEOUT_S)


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import loky
    from loky.backend import get_context
    from pivot_supervise.workers._tasks import WarmRequest, initialize_worker, warm_up

    root, barrier = sys.argv[1], sys.argv[2]
    executor = loky.ProcessPoolExecutor(
        max_workers=2, context=get_context("loky"),
        initializer=initialize_worker, initargs=(os.getpid(),),
    )
    request = WarmRequest(root, barrier, 2, 20.0)
    futures = [executor.submit(warm_up, request) for _ in range(2)]
    print(json.dumps([f.result(timeout=20).pid for f in futures]), flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphaned zombie is dead, just not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process semantics")
def test_workers_exit_when_the_supervisor_is_killed(project: Path, tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()  # the supervisor's, as a warm-up barrier always is
    supervisor = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(project), str(barrier)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    worker_pids: list[int] = []
    try:
        assert supervisor.stdout is not None
        ready, _, _ = select.select([supervisor.stdout], [], [], TIMEOUT_S)
        assert ready, "the supervisor script never reported its workers"
        worker_pids = json.loads(supervisor.stdout.readline())
        assert len(set(worker_pids)) == 2
        assert all(_alive(pid) for pid in worker_pids)

        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(TIMEOUT_S)
        deadline = time.monotonic() + 3.0
        while any(_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in worker_pids)
    finally:
        for pid in [supervisor.pid, *worker_pids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        supervisor.wait(TIMEOUT_S)
        if supervisor.stdout is not None:
            supervisor.stdout.close()


def test_a_stop_file_is_read_whole_or_not_at_all_while_it_is_written(tmp_path: Path) -> None:
    """Another worker may look for a run's stop file just as it is made: it must find
    the failed stage's name or no file, never an empty one (which reads as "an earlier
    stage")."""
    found: list[str] = []
    for attempt in range(300):
        path = tmp_path / f"stopped-run-{attempt}"
        request = RunRequest(generation=1, stage="other", stop_file=str(path))
        writing = threading.Event()

        def look(request: RunRequest = request, writing: threading.Event = writing) -> None:
            writing.wait()
            while (stopped := _stopped_by(request)) is None:
                pass
            found.append(stopped)

        reader = threading.Thread(target=look)
        reader.start()
        writing.set()
        _stop_run(str(path), "s060")
        _stop_run(str(path), "s061")  # a second failure: the first one's name stays
        reader.join(TIMEOUT_S)
        assert not reader.is_alive()
    assert set(found) == {"s060"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"stopped-run-{i}" for i in range(300)
    ), "a file written aside was left behind"
