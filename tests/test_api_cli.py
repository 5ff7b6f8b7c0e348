"""The client commands against a real ``pivot-supervise watch`` process: ``status``,
``trigger``, ``restart``, ``events`` (reconnecting when the supervisor restarts), and
their error when no supervisor runs for the project."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from api_helpers import PROJECT
from conftest import TIMEOUT_S, CliProcess, cli, run_cli
from pivot_supervise.supervisor._server_file import ServerInfo, claim_server_file, server_file

ProjectFactory = Callable[[Mapping[str, str]], Path]

EXIT_NO_SUPERVISOR = 3
STOP_WITHIN_S = 10.0


def wait_for_stderr(process: CliProcess, text: str, timeout: float = TIMEOUT_S) -> None:
    """Poll a process's stderr file until ``text`` shows up (bounded)."""
    deadline = time.monotonic() + timeout
    while text not in process.stderr():
        if time.monotonic() > deadline or process.proc.poll() is not None:
            raise AssertionError(f"waited for {text!r} on stderr; got:\n{process.stderr()}")
        time.sleep(0.02)


def watch_args(project: Path) -> list[str]:
    return ["watch", "--json", "-j", "1", "--project", str(project)]


@pytest.mark.parametrize("command", [["status"], ["trigger", "copy"], ["restart"], ["events"]])
def test_client_commands_say_no_supervisor_runs_and_exit_3(
    make_project: ProjectFactory, command: list[str]
) -> None:
    project = make_project(PROJECT)
    result = run_cli([*command, "--project", str(project)])
    assert result.returncode == EXIT_NO_SUPERVISOR, result.stderr
    assert "no supervisor is running for" in result.stderr
    assert "pivot-supervise watch" in result.stderr
    assert result.stdout == ""


def test_a_file_left_by_a_killed_supervisor_is_reported_as_no_supervisor(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    claim_server_file(project, ServerInfo("ws://127.0.0.1:9/", "t", child.pid))
    result = run_cli(["status", "--project", str(project)])
    assert result.returncode == EXIT_NO_SUPERVISOR
    assert f"pid {child.pid}, which is gone" in result.stderr


def test_status_trigger_restart_and_events_drive_a_running_watch(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    project = make_project(PROJECT)
    with cli(watch_args(project), tmp_path) as watch:
        watch.wait_for("run_finished")
        status = run_cli(["status", "--json", "--project", str(project)])
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["state"] == "idle" and state["generation"] == 1
        assert state["counts"]["ok"] == 2
        human = run_cli(["status", "--project", str(project)])
        assert "state: idle" in human.stdout and "generation 1" in human.stdout

        with cli(["events", "--json", "--project", str(project)], tmp_path) as events:
            wait_for_stderr(events, f"following the supervisor (pid {watch.proc.pid})")
            trigger = run_cli(["trigger", "copy", "--force", "--project", str(project)])
            assert trigger.returncode == 0, trigger.stderr
            assert trigger.stdout.strip() == "run 2: produce, copy"
            events.wait_for("run_started", run_id=2, trigger="api")
            events.wait_for("run_finished", run_id=2)

            unknown = run_cli(["trigger", "trian", "--project", str(project)])
            assert unknown.returncode == 2
            assert "unknown stage 'trian'" in unknown.stderr

            restart = run_cli(["restart", "--project", str(project)])
            assert restart.returncode == 0, restart.stderr
            assert "loading generation 2" in restart.stdout
            events.wait_for("generation_ready", generation=2, trigger="restart")
            events.wait_for("run_finished")

            second = run_cli(watch_args(project))
            assert second.returncode == 1
            assert "already running" in second.stderr

            # The supervisor stops: `events` waits for the next one and reconnects.
            old_pid = watch.proc.pid
            watch.proc.send_signal(signal.SIGTERM)
            assert watch.wait(STOP_WITHIN_S) == 0, watch.stderr()
            assert not server_file(project).exists()
            with cli(watch_args(project), tmp_path) as again:
                again.wait_for("run_finished")
                wait_for_stderr(events, f"following the supervisor (pid {again.proc.pid})")
                assert again.proc.pid != old_pid
                trigger = run_cli(["trigger", "--project", str(project)])
                assert trigger.returncode == 0, trigger.stderr
                events.wait_for("run_finished", run_id=2)
            assert events.proc.poll() is None  # still following
