"""The command line's contract: help, listing stages, and clear errors with exit code 2."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from conftest import run_cli

ProjectFactory = Callable[[Mapping[str, str]], Path]

EXIT_USAGE = 2

PROJECT = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["b.txt"], outs=["c.txt"])
        def third(params):
            Path("c.txt").write_text(Path("b.txt").read_text() * params["times"])

        @stage(deps=["a.txt"], outs=["b.txt"])
        def second():
            Path("b.txt").write_text(Path("a.txt").read_text())

        @stage(outs=["a.txt"])
        def first():
            Path("a.txt").write_text("a")
    """,
    "params.toml": """
        [third]
        times = 2
    """,
}


@pytest.mark.parametrize(
    "command", [[], ["run"], ["watch"], ["stages"], ["demo"]], ids=lambda c: c[0] if c else "top"
)
def test_help_of_every_command_exits_0(command: list[str]) -> None:
    result = run_cli([*command, "--help"])
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert result.stderr == ""


def test_stages_json_lists_the_stages_in_execution_order(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    result = run_cli(["stages", "--json", "--project", str(project)])
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [s["name"] for s in document["stages"]] == ["first", "second", "third"]
    by_name = {s["name"]: s for s in document["stages"]}
    assert by_name["second"]["deps"] == ["a.txt"]
    assert by_name["second"]["outs"] == ["b.txt"]
    assert by_name["third"]["params"] == {"times": 2}
    assert by_name["first"]["params"] is None


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["run", "-j", "0"], "0"),
        (["watch", "--max-workers", "two"], "two"),
        (["run", "--on-error", "maybe"], "maybe"),
        (["watch", "--debounce", "x"], "x"),
        (["watch", "--debounce", "20000"], "20000"),
        (["run", "--no-such-flag"], "--no-such-flag"),
        (["nope"], "nope"),
    ],
    ids=["j0", "max-workers-word", "on-error-maybe", "debounce-x", "debounce-huge", "flag", "cmd"],
)
def test_a_bad_flag_is_one_line_on_stderr_and_exit_2(
    args: list[str], mentions: str, make_project: ProjectFactory
) -> None:
    project = make_project(PROJECT)
    result = run_cli([*args, "--project", str(project)])
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert mentions in lines[0]
    assert result.stdout == ""
    assert not (project / "a.txt").exists()


def test_run_of_an_unknown_stage_exits_2_and_names_it(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    result = run_cli(["run", "nope", "--json", "--project", str(project)])
    assert result.returncode == EXIT_USAGE, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, events
    assert "'nope'" in errors[0]["message"]
    assert "first" in errors[0]["message"]  # and lists what exists
    assert not [e for e in events if e["event"] == "stage_started"]
    assert events[-1] == {**events[-1], "event": "supervisor_stopped", "exit_code": EXIT_USAGE}


def test_run_of_an_unknown_stage_names_it_on_the_terminal_too(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    result = run_cli(["run", "nope", "--project", str(project)])
    assert result.returncode == EXIT_USAGE
    assert "'nope'" in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["run", "watch", "stages"])
def test_a_config_error_exits_2_naming_the_key_and_the_file(
    command: str, make_project: ProjectFactory
) -> None:
    project = make_project({**PROJECT, "pivot-supervise.toml": "max_wrokers = 2\n"})
    result = run_cli([command, "--project", str(project)])
    assert result.returncode == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "max_wrokers" in lines[0]
    assert str(project / "pivot-supervise.toml") in lines[0]
    assert result.stdout == ""


def test_run_exits_0_when_every_stage_succeeds_and_1_when_one_fails(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    ok = run_cli(["run", "--json", "-j", "1", "--project", str(project)])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (project / "c.txt").read_text() == "aa"

    (project / "params.toml").write_text("[third]\ntimes = 'x'\n")  # str * str: TypeError
    failed = run_cli(["run", "--json", "-j", "1", "--project", str(project)])
    assert failed.returncode == 1
    events = [json.loads(line) for line in failed.stdout.splitlines()]
    third = [e for e in events if e["event"] == "stage_finished" and e["stage"] == "third"]
    assert third[0]["status"] == "failed"
    assert "TypeError" in third[0]["error"]


def test_run_of_a_pipeline_that_does_not_load_exits_1_and_stops_its_workers(
    make_project: ProjectFactory,
) -> None:
    """The failed generation is retired as the run ends: its workers are shut down then,
    not left to the last resort of a kill after a grace period (which also warned)."""
    project = make_project({"pipeline.py": "raise RuntimeError('boom')\n"})
    failed = run_cli(["run", "-j", "2", "--project", str(project)])
    assert failed.returncode == 1
    assert "RuntimeError in pipeline.py line 1: boom" in failed.stdout, failed.stdout
    assert "did not exit after shutdown" not in failed.stderr, failed.stderr
