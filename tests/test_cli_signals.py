"""``pivot-supervise watch --json`` as a real process: stopping it, and killing it.

Each supervisor runs in its own session; its stdout is read as JSON lines with bounded
waits.  Whatever way it ends, none of its processes may be left behind.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from conftest import CliProcess, children_of, wait_gone_blocking

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: Exits well inside this after SIGINT / SIGTERM, workers shut down included.
STOP_WITHIN_S = 5.0
#: Orphaned workers notice their supervisor is gone within this (watchdog polling).
ORPHANS_EXIT_WITHIN_S = 3.0

QUICK = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["data/in.txt"], outs=["a.txt"])
        def first():
            Path("a.txt").write_text(Path("data/in.txt").read_text())

        @stage(deps=["a.txt"], outs=["b.txt"])
        def second():
            Path("b.txt").write_text(Path("a.txt").read_text())
    """,
    "data/in.txt": "in",
}

SLOW = {
    "pipeline.py": """
        import time
        from pathlib import Path

        from pivot_supervise import stage

        @stage(outs=["slow.txt"])
        def slow():
            time.sleep(30)  # the stage's own work; the test stops the supervisor meanwhile
            Path("slow.txt").write_text("done")
    """,
}


@pytest.fixture
def watching(
    make_project: ProjectFactory, tmp_path: Path
) -> Iterator[Callable[[Mapping[str, str]], CliProcess]]:
    """Start ``watch --json -j 2`` on a new project; everything is killed afterwards."""
    opened: list[CliProcess] = []

    def start(files: Mapping[str, str]) -> CliProcess:
        project = make_project(files)
        args = ["watch", "--json", "-j", "2", "--project", str(project)]
        process = CliProcess(args, tmp_path / f"stderr-{len(opened)}.txt")
        opened.append(process)
        return process

    try:
        yield start
    finally:
        for process in opened:
            process.close()


def descendants(pid: int) -> set[int]:
    """Every running process below ``pid`` (workers, loky's resource tracker)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def after_first_run(process: CliProcess) -> set[int]:
    process.wait_for("generation_ready")
    finished = process.wait_for("run_finished", run_id=1)
    assert finished["failed"] == 0
    workers = process.worker_pids()
    assert workers
    family = descendants(process.proc.pid)
    assert workers <= family, (workers, family)
    return family


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_watch_stops_with_exit_0_on_a_signal_and_leaves_no_process(
    watching: Callable[[Mapping[str, str]], CliProcess], signum: signal.Signals
) -> None:
    process = watching(QUICK)
    family = after_first_run(process)

    process.proc.send_signal(signum)
    assert process.wait(STOP_WITHIN_S) == 0, process.stderr()
    process.read_to_end()
    assert process.events[-1]["event"] == "supervisor_stopped"
    assert process.events[-1]["exit_code"] == 0
    assert not wait_gone_blocking(family, 1.0), "left behind after a clean exit"


def test_ctrl_c_to_the_whole_process_group_exits_0_quietly(
    watching: Callable[[Mapping[str, str]], CliProcess],
) -> None:
    process = watching(QUICK)
    family = after_first_run(process)

    os.killpg(process.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert process.wait(STOP_WITHIN_S) == 0, process.stderr()
    process.read_to_end()
    assert process.events[-1]["event"] == "supervisor_stopped"
    assert "Traceback" not in process.stderr()
    assert not wait_gone_blocking(family, 1.0)


def test_sigterm_while_a_stage_runs_exits_promptly_and_leaves_no_process(
    watching: Callable[[Mapping[str, str]], CliProcess],
) -> None:
    process = watching(SLOW)
    process.wait_for("generation_ready")
    process.wait_for("stage_started", stage="slow")
    family = descendants(process.proc.pid)
    assert process.worker_pids() <= family

    process.proc.send_signal(signal.SIGTERM)
    assert process.wait(STOP_WITHIN_S) == 0, process.stderr()
    assert not wait_gone_blocking(family, 1.0)


def test_workers_exit_by_themselves_when_the_supervisor_is_killed(
    watching: Callable[[Mapping[str, str]], CliProcess],
) -> None:
    process = watching(QUICK)
    family = after_first_run(process)
    workers = process.worker_pids()

    process.proc.kill()
    assert process.wait(STOP_WITHIN_S) is not None
    survivors = wait_gone_blocking(workers, ORPHANS_EXIT_WITHIN_S)
    assert not survivors, f"workers outlived a SIGKILLed supervisor: {survivors}"
    # loky's resource trackers go too once nothing holds their pipes open.
    assert not wait_gone_blocking(family, ORPHANS_EXIT_WITHIN_S)


def test_json_output_is_one_object_per_line_with_event_and_ts(
    watching: Callable[[Mapping[str, str]], CliProcess],
) -> None:
    process = watching(QUICK)
    after_first_run(process)
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait(STOP_WITHIN_S) == 0
    process.read_to_end()  # every line was parsed as JSON on the way in
    assert process.events, "no output"
    for event in process.events:
        assert isinstance(event["event"], str)
        assert isinstance(event["ts"], str) and event["ts"].endswith("Z")
    names = [e["event"] for e in process.events]
    assert names[0] == "supervisor_started"
    assert names[-1] == "supervisor_stopped"
