"""Incremental runs end to end: real files, real worker processes, a real state store.

A stage runs only when something it depends on changed (its code, what its code reaches
in the project, its params, a dep's content, a missing output) or when forced; otherwise
it is reported ``skipped`` with the reason ``unchanged``.  These tests make one change at
a time to a small project and check that exactly the expected stages run, and that each
ran stage names the change in its ``reason``.

No sleeps: edits are detected without waiting because workers compile project code from
source and the hash cache re-reads any file hashed less than 2 s after its mtime.  Content
edits still change the file size where that is convenient.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from conftest import LOUD_GLOBAL, Session, named, run_cli, supervising
from pivot_supervise.supervisor._events import Event
from pivot_supervise.supervisor._state import STATE_DIR, StateStore

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: a reads a dep, d is downstream of a; b uses helpers.h_b, f is downstream of b; c reads
#: the module constant SCALE; e is unrelated to everything; p takes params.
PROJECT = {
    "pipeline.py": """
        from pathlib import Path

        import helpers
        from pivot_supervise import stage

        SCALE = 3

        @stage(deps=["data/raw.csv"], outs=["out/a.txt"])
        def a():
            rows = Path("data/raw.csv").read_text().split()
            Path("out/a.txt").write_text(f"{len(rows)} rows")

        @stage(outs=["out/b.txt"])
        def b():
            Path("out/b.txt").write_text(helpers.h_b(2))

        @stage(outs=["out/c.txt"])
        def c():
            Path("out/c.txt").write_text(str(SCALE * 2))

        @stage(deps=["out/a.txt"], outs=["out/d.txt"])
        def d():
            Path("out/d.txt").write_text(Path("out/a.txt").read_text() + "!")

        @stage(outs=["out/e.txt"])
        def e():
            Path("out/e.txt").write_text("e")

        @stage(deps=["out/b.txt"], outs=["out/f.txt"])
        def f():
            Path("out/f.txt").write_text(Path("out/b.txt").read_text() + "?")

        @stage(outs=["out/p.txt"])
        def p(params):
            Path("out/p.txt").write_text(str(params["n"]))
    """,
    "helpers.py": """
        def h_b(x):
            return "b" * x


        def unused():
            return 1
    """,
    "params.toml": """
        [p]
        n = 1
    """,
    "data/raw.csv": "1\n2\n3\n",
    "out/.keep": "",
}

ALL = frozenset("abcdefp")


# ------------------------------------------------------------------ helpers


@dataclass
class Outcome:
    """What one session did: the stages that ran and the ones skipped, with reasons."""

    ran: dict[str, str]
    skipped: dict[str, str]
    started: list[str]
    events: list[Event]

    def describe(self) -> str:
        return f"ran {self.ran}, skipped {self.skipped}"


def outcome_of(events: list[Event]) -> Outcome:
    """Sort the ``stage_finished`` events by status."""
    ran: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for event in events:
        if event.name != "stage_finished":
            continue
        stage, status = str(event.get("stage")), event.get("status")
        assert status in ("ok", "skipped"), f"stage {stage} {status}: {event.fields}"
        (ran if status == "ok" else skipped)[stage] = str(event.get("reason"))
    started = [str(e.get("stage")) for e in events if e.name == "stage_started"]
    return Outcome(ran, skipped, started, events)


async def run_once(project: Path, **kwargs: Any) -> Outcome:
    """One incremental one-shot run on real workers; every stage must succeed or skip."""
    async with supervising(
        project, watch=False, incremental=True, max_workers=1, **kwargs
    ) as session:
        code = await session.wait_exit()
    assert code == 0, session.events.describe()
    result = outcome_of(session.events.seen)
    assert set(result.started) == set(result.ran), "stage_started only for stages that run"
    assert len(result.started) == len(result.ran)
    return result


def expect(result: Outcome, ran: set[str], universe: frozenset[str] = ALL) -> None:
    """Exactly ``ran`` ran; every other stage was skipped as unchanged."""
    assert set(result.ran) == ran, result.describe()
    assert set(result.skipped) == universe - ran, result.describe()
    for stage, reason in result.skipped.items():
        assert reason.startswith("unchanged"), f"{stage}: {reason}"


def edit(project: Path, rel: str, old: str, new: str) -> None:
    """Replace ``old`` (which must occur exactly once) by ``new`` in a project file."""
    path = project / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {rel}:\n{text}"
    path.write_text(text.replace(old, new))


async def cli_json(args: list[str], project: Path) -> dict[str, Any]:
    done = await cli_async([*args, "--project", str(project), "--json"])
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert isinstance(document, dict)
    return document


async def cli_async(args: list[str]) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(functools.partial(run_cli, args, timeout=30))


def json_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def cli_outcome(events: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    ran: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for event in events:
        if event.get("event") == "stage_finished":
            assert event["status"] in ("ok", "skipped"), event
            target = ran if event["status"] == "ok" else skipped
            target[event["stage"]] = event.get("reason", "")
    return ran, skipped


# ------------------------------------------------------------------ 1. the change matrix


def touch_back(project: Path, rel: str) -> None:
    """Change a file's mtime (10 s back) and nothing else."""
    path = project / rel
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns - 10_000_000_000))
    assert path.stat().st_mtime_ns != info.st_mtime_ns


@dataclass(frozen=True)
class Step:
    """One change to the matrix project, and exactly what must run (with its reason)."""

    what: str
    change: Callable[[Path], None]
    ran: Mapping[str, str]


#: Applied in order to one project; each step starts from an up-to-date state.
STEPS = (
    Step(
        "a stage's body: it runs, and its downstream (its input content changed)",
        lambda p: edit(p, "pipeline.py", 'f"{len(rows)} rows"', 'f"{len(rows)} rows read"'),
        {"a": "code changed: pipeline:a", "d": "dep 'out/a.txt' changed"},
    ),
    Step(
        "a helper used by one stage, changing its output: that stage and its downstream",
        lambda p: edit(p, "helpers.py", 'return "b" * x', 'return "B" * x + "!"'),
        {"b": "code changed: helpers:h_b", "f": "dep 'out/b.txt' changed"},
    ),
    Step(
        "the helper refactored, same output: the stage, not its downstream",
        lambda p: edit(
            p, "helpers.py", 'return "B" * x + "!"', 'out = "B" * x\n    return out + "!"'
        ),
        {"b": "code changed: helpers:h_b"},
    ),
    Step(
        "a module constant: the stage reading it",
        lambda p: edit(p, "pipeline.py", "SCALE = 3", "SCALE = 40"),
        {"c": "code changed: pipeline:SCALE"},
    ),
    Step(
        "a function no stage reaches: nothing",
        lambda p: edit(p, "helpers.py", "return 1", "return 1 + 22"),
        {},
    ),
    Step(
        "comments only (shifting every line below them): nothing",
        lambda p: (
            edit(p, "helpers.py", "def h_b(x):\n", "# the helper of b\ndef h_b(x):\n    # twice\n"),
            edit(p, "pipeline.py", "SCALE = 40\n", "# a constant\nSCALE = 40  # scaled\n"),
            edit(p, "pipeline.py", "def c():\n", "def c():\n    # writes twice SCALE\n"),
        ),
        {},
    ),
    Step(
        "a params value: that stage",
        lambda p: edit(p, "params.toml", "n = 1", "n = 22"),
        {"p": "params changed"},
    ),
    Step(
        "a dep's content: its consumer, and the downstream whose input changes (4 rows)",
        lambda p: (p / "data/raw.csv").write_text("1\n2\n3\n4\n"),
        {"a": "dep 'data/raw.csv' changed", "d": "dep 'out/a.txt' changed"},
    ),
    Step(
        "a dep's content again: not the downstream whose input comes out the same (4 rows)",
        lambda p: (p / "data/raw.csv").write_text("1\n2\n3\n44\n"),
        {"a": "dep 'data/raw.csv' changed"},
    ),
    Step(
        "a same-size edit right after the last run: seen (the hash cache's racy window)",
        lambda p: (p / "data/raw.csv").write_text("1\n2\n3\n45\n"),
        {"a": "dep 'data/raw.csv' changed"},
    ),
    Step(
        "a dep touched, its content unchanged: nothing",
        lambda p: touch_back(p, "data/raw.csv"),
        {},
    ),
    Step(
        "a deleted output: its producer; its consumer not (the content comes back the same)",
        lambda p: (p / "out/a.txt").unlink(),
        {"a": "output 'out/a.txt' is missing"},
    ),
)


async def test_change_matrix_runs_exactly_the_stages_a_change_affects(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)

    # A fresh project: everything runs, because nothing ever succeeded.
    first = await run_once(project)
    expect(first, set(ALL))
    assert set(first.ran.values()) == {"no successful run recorded"}, first.ran

    # Nothing changed: nothing runs, and every stage says so.
    second = await run_once(project)
    expect(second, set())
    assert set(second.skipped.values()) == {"unchanged"}, second.skipped

    for step in STEPS:
        step.change(project)
        result = await run_once(project)
        assert result.ran == step.ran, f"{step.what}: {result.describe()}"
        expect(result, set(step.ran))

    # What the stages wrote along the way is what the last changes asked for.
    assert (project / "out/a.txt").read_text() == "4 rows read"
    assert (project / "out/f.txt").read_text() == "BB!?"
    assert (project / "out/c.txt").read_text() == "80"
    assert (project / "out/p.txt").read_text() == "22"


async def test_a_hand_edited_output_reruns_its_consumers_and_not_its_producer(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    expect(await run_once(project), set(ALL))

    (project / "out/b.txt").write_text("edited by a person\n")
    result = await run_once(project)
    expect(result, {"f"})  # b's reason starts with "unchanged", with a note
    assert result.ran["f"] == "dep 'out/b.txt' changed"
    assert result.skipped["b"] == (
        "unchanged; output 'out/b.txt' was edited by hand and is left alone"
    )
    assert (project / "out/b.txt").read_text() == "edited by a person\n"
    assert (project / "out/f.txt").read_text() == "edited by a person\n?"

    explained = await cli_json(["explain"], project)
    by_stage = {entry["stage"]: entry for entry in explained["stages"]}
    assert set(by_stage) == ALL
    assert not any(entry["would_run"] for entry in by_stage.values()), by_stage
    assert by_stage["b"]["hand_edited"] == ["out/b.txt"]
    assert all(not by_stage[s]["hand_edited"] for s in ALL - {"b"})

    # Still left alone on the next run; nothing else runs either.
    result = await run_once(project)
    expect(result, set())
    assert "edited by hand" in result.skipped["b"]
    assert (project / "out/b.txt").read_text() == "edited by a person\n"

    # Its producer runs again once its own inputs change, and the edit is replaced.
    edit(project, "helpers.py", 'return "b" * x', 'return "b" * x * 3')
    result = await run_once(project)
    expect(result, {"b", "f"})
    assert (project / "out/b.txt").read_text() == "bbbbbb"


# ------------------------------------------------------------------ 2. watch mode


async def _next_run(session: Session, generation: int) -> Outcome:
    """The run on ``generation``, from its ``generation_ready`` to its ``run_finished``."""
    await session.events.wait_for(named("generation_ready", generation=generation))
    started = await session.events.wait_for("run_started")
    begin = session.events.mark()
    await session.events.wait_for(named("run_finished", run_id=started.get("run_id")))
    # One run at a time here, so the events between its start and end are its own.
    result = outcome_of(session.events.since(begin))
    ran_on = {
        e.get("generation")
        for e in result.events
        if e.name in ("stage_started", "stage_finished") and e.get("status") != "skipped"
    }
    assert ran_on <= {generation}, ran_on
    assert set(result.started) == set(result.ran), result.describe()
    return result


async def test_watch_a_helper_edit_reruns_only_the_stages_reaching_it(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    async with supervising(project, watch=True, incremental=True, max_workers=1) as session:
        first = await _next_run(session, 1)
        expect(first, set(ALL))

        edit(project, "helpers.py", 'return "b" * x', 'return "b" * x + "++"')
        second = await _next_run(session, 2)
        expect(second, {"b", "f"})
        assert second.ran["b"] == "code changed: helpers:h_b"
        assert second.ran["f"] == "dep 'out/b.txt' changed"

        # A comment only: a new generation loads (it is a .py change), nothing runs.
        edit(project, "helpers.py", "def unused():\n", "def unused():\n    # not used\n")
        third = await _next_run(session, 3)
        expect(third, set())
    assert (project / "out/f.txt").read_text() == "bb++?"


async def _next_data_run(session: Session) -> tuple[Event, Outcome]:
    """The next run (on the warm generation), from ``run_started`` to ``run_finished``."""
    started = await session.events.wait_for("run_started")
    begin = session.events.mark()
    await session.events.wait_for(named("run_finished", run_id=started.get("run_id")))
    return started, outcome_of(session.events.since(begin))


async def test_watch_output_changes_rerun_only_what_changed(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    async with supervising(project, watch=True, incremental=True, max_workers=1) as session:
        expect(await _next_run(session, 1), set(ALL))

        # A hand-edited output: its consumer runs; its producer is not even scheduled.
        (project / "out/b.txt").write_text("by hand, in watch\n")
        started, result = await _next_data_run(session)
        assert started.get("stages") == ["f"], started.fields
        assert result.ran == {"f": "dep 'out/b.txt' changed"}, result.describe()
        assert (project / "out/b.txt").read_text() == "by hand, in watch\n"

        # A deleted output: its producer runs; the consumer finds its input unchanged.
        (project / "out/a.txt").unlink()
        started, result = await _next_data_run(session)
        assert started.get("generation") == 1, started.fields
        assert result.ran == {"a": "output 'out/a.txt' is missing"}, result.describe()
        assert result.skipped == {"d": "unchanged"}, result.describe()


async def test_watch_force_runs_up_to_date_stages(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    expect(await run_once(project), set(ALL))

    async with supervising(project, watch=True, incremental=True, force=True) as session:
        forced = await _next_run(session, 1)
        expect(forced, set(ALL))
        assert set(forced.ran.values()) == {"forced"}, forced.ran
        # --force holds for the first run only: the next one skips what is up to date.
        edit(project, "pipeline.py", "def e():\n", "def e():\n    # a comment\n")
        expect(await _next_run(session, 2), set())

    async with supervising(
        project, watch=True, incremental=True, max_workers=1, force=frozenset({"b"})
    ) as session:
        one = await _next_run(session, 1)
    # b rewrites the same content, so its downstream stays up to date.
    expect(one, {"b"})
    assert one.ran["b"] == "forced"


# ------------------------------------------------------------------ 3. crash safety

CRASHY = {
    "pipeline.py": """
        import os
        from pathlib import Path

        from pivot_supervise import stage

        @stage(deps=["data/mode.txt"], outs=["out/x.txt"])
        def x():
            mode = Path("data/mode.txt").read_text()
            if mode.startswith("crash"):
                os._exit(3)
            Path("out/x.txt").write_text(mode)

        @stage(outs=["out/y.txt"])
        def y():
            Path("out/y.txt").write_text("y")
    """,
    "data/mode.txt": "fine\n",
    "out/.keep": "",
}


async def test_a_stage_whose_run_never_finished_runs_again(make_project: ProjectFactory) -> None:
    project = make_project(CRASHY)
    expect(await run_once(project), {"x", "y"}, frozenset("xy"))

    (project / "data/mode.txt").write_text("crash now\n")
    async with supervising(project, watch=False, incremental=True, max_workers=1) as session:
        assert await session.wait_exit() == 1
        crashed = await session.events.wait_for(named("stage_finished", stage="x"))
    assert crashed.get("status") == "failed", crashed.fields
    with StateStore.open(project) as store:
        assert store.record("x") is None, "the record is dropped before the stage starts"
        assert store.record("y") is not None
        last = store.history(stage="x", limit=1)[0]
    assert last.outcome == "failed", last
    assert [(line.stage, line.status) for line in last.stages] == [("x", "failed")]

    # Back to the content of the last success: x's output and deps match the old record,
    # but its run never finished, so it is not "unchanged".
    (project / "data/mode.txt").write_text("fine\n")
    result = await run_once(project)
    expect(result, {"x"}, frozenset("xy"))
    assert result.ran["x"] == "no successful run recorded"


# ------------------------------------------------------------------ 4. CLI


async def test_cli_explain_says_what_would_run_and_why(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    expect(await run_once(project), set(ALL))

    edit(project, "helpers.py", 'return "b" * x', 'return "b" * x * 2')
    edit(project, "params.toml", "n = 1", "n = 333")
    (project / "data/raw.csv").write_text("1\n2\n")
    (project / "out/e.txt").unlink()
    (project / "out/c.txt").write_text("hand made")

    done = await cli_async(["explain", "--project", str(project)])
    assert done.returncode == 0, done.stderr
    text = done.stdout
    lines = text.splitlines()
    assert "a: would run" in lines, text
    assert "    - dep 'data/raw.csv' changed" in lines, text
    assert "b: would run" in lines, text
    assert "    - code changed: helpers:h_b" in lines, text
    assert "p: would run" in lines, text
    assert "    - params changed" in lines, text
    assert "e: would run" in lines, text
    assert "    - output 'out/e.txt' is missing" in lines, text
    assert "c: up to date" in lines, text
    assert any("'out/c.txt' was edited by hand" in line for line in lines), text
    assert any(line.startswith("d: up to date now, but runs if a") for line in lines), text
    assert any(line.startswith("f: up to date now, but runs if b") for line in lines), text

    document = await cli_json(["explain"], project)
    stages = {entry["stage"]: entry for entry in document["stages"]}
    assert set(stages) == ALL
    assert {s for s, entry in stages.items() if entry["would_run"]} == {"a", "b", "e", "p"}
    assert stages["a"]["reasons"] == ["dep 'data/raw.csv' changed"]
    assert stages["b"]["reasons"] == ["code changed: helpers:h_b"]
    assert stages["e"]["reasons"] == ["output 'out/e.txt' is missing"]
    assert stages["p"]["reasons"] == ["params changed"]
    assert stages["c"] == {
        "stage": "c",
        "would_run": False,
        "reasons": [],
        "hand_edited": ["out/c.txt"],
    }

    # explain only explains: running it changed nothing, so the next run does that work.
    result = await run_once(project)
    expect(result, {"a", "b", "d", "e", "f", "p"})
    assert "edited by hand" in result.skipped["c"]
    assert (project / "out/c.txt").read_text() == "hand made"

    # With stage names: those and what they need.
    narrowed = await cli_json(["explain", "d"], project)
    assert [entry["stage"] for entry in narrowed["stages"]] == ["a", "d"]
    assert not any(entry["would_run"] for entry in narrowed["stages"])


#: A stage whose helper cannot be fingerprinted (see ``LOUD_GLOBAL``) but runs.
UNFINGERPRINTABLE = {
    "pipeline.py": """
        from pathlib import Path
        from pivot_supervise import stage
        import helpers

        @stage(outs=["out/a.txt"])
        def a():
            Path("out/a.txt").write_text(str(helpers.count(1)))
    """,
    "helpers.py": LOUD_GLOBAL
    + textwrap.dedent(
        """
        def count(x):
            return x if x else len([])
        """
    ),
    "out/.keep": "",
}


async def test_code_that_cannot_be_fingerprinted_runs_every_time_and_explain_says_why(
    make_project: ProjectFactory,
) -> None:
    project = make_project(UNFINGERPRINTABLE)
    for _ in range(2):  # its record never matches: it runs again
        done = await cli_async(["run", "--project", str(project), "--json"])
        assert done.returncode == 0, done.stderr
        events = json_events(done.stdout)
        ran, skipped = cli_outcome(events)
        assert (set(ran), skipped) == ({"a"}, {}), events
        warnings = [e["message"] for e in events if e.get("event") == "pipeline_warning"]
        assert any(
            w.startswith("could not fingerprint the pipeline's code (ValueError") for w in warnings
        )
    done = await cli_async(["explain", "--project", str(project)])
    assert done.returncode == 0, done.stderr
    assert "warning: could not fingerprint the pipeline's code" in done.stderr
    lines = done.stdout.splitlines()
    assert "a: would run" in lines, done.stdout
    assert "    - its code could not be fingerprinted (see the load's warning)" in lines


async def test_cli_history_and_force(make_project: ProjectFactory) -> None:
    project = make_project(PROJECT)
    base = ["--project", str(project), "--json", "-j", "1"]

    done = await cli_async(["run", *base])
    assert done.returncode == 0, done.stderr
    ran, skipped = cli_outcome(json_events(done.stdout))
    assert set(ran) == ALL and not skipped

    done = await cli_async(["run", *base])
    assert done.returncode == 0, done.stderr
    ran, skipped = cli_outcome(json_events(done.stdout))
    assert not ran and set(skipped) == ALL

    # --force: every stage, though all are up to date.
    done = await cli_async(["run", "--force", *base])
    assert done.returncode == 0, done.stderr
    ran, skipped = cli_outcome(json_events(done.stdout))
    assert set(ran) == ALL and not skipped
    assert set(ran.values()) == {"forced"}

    # --force STAGE: that one (and, repeated, another); the rest is up to date.
    done = await cli_async(["run", "--force", "e", "--force", "c", *base])
    assert done.returncode == 0, done.stderr
    ran, skipped = cli_outcome(json_events(done.stdout))
    assert ran == {"c": "forced", "e": "forced"}, ran
    assert set(skipped) == ALL - {"c", "e"}

    history = await cli_json(["history"], project)
    runs = history["runs"]
    assert len(runs) == 4
    assert [r["run_id"] for r in runs] == sorted((r["run_id"] for r in runs), reverse=True)
    assert all(r["outcome"] == "ok" and r["finished_at"] for r in runs), runs
    newest, forced_all, quiet, first = runs
    statuses = {line["stage"]: line["status"] for line in newest["stages"]}
    assert statuses == {s: "ok" if s in "ce" else "skipped" for s in ALL}
    assert {line["stage"]: line["reason"] for line in forced_all["stages"]} == dict.fromkeys(
        ALL, "forced"
    )
    assert {line["status"] for line in quiet["stages"]} == {"skipped"}
    assert {line["reason"] for line in first["stages"]} == {"no successful run recorded"}
    for line in first["stages"]:
        assert line["pid"] and line["duration_ms"] is not None, line
    for line in quiet["stages"]:
        assert line["reason"] == "unchanged", line

    # --stage X --limit 1: the newest run that had X, with only X's line.
    only = await cli_json(["history", "--stage", "e", "--limit", "1"], project)
    assert len(only["runs"]) == 1
    assert only["runs"][0]["run_id"] == newest["run_id"]
    assert only["runs"][0]["stages"] == [line for line in newest["stages"] if line["stage"] == "e"]

    text = await cli_async(["history", "--project", str(project), "--limit", "2"])
    assert text.returncode == 0, text.stderr
    assert sum(line.startswith("run ") for line in text.stdout.splitlines()) == 2, text.stdout
    assert "forced" in text.stdout

    none = await cli_async(["history", "--project", str(project), "--stage", "nosuch"])
    assert none.returncode == 0, none.stderr
    assert none.stdout == "no recorded run included stage 'nosuch'\n"


# ------------------------------------------------------------------ 5. a damaged store


async def test_a_corrupt_state_store_is_moved_aside_and_every_stage_runs(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PROJECT)
    expect(await run_once(project), set(ALL))
    state_dir = project / STATE_DIR
    for companion in state_dir.glob("state.db-*"):
        companion.unlink()
    (state_dir / "state.db").write_bytes(b"this is no database, just garbage\n" * 200)

    result = await run_once(project)
    warnings = [e.get("message") for e in result.events if e.name == "pipeline_warning"]
    assert len(warnings) == 1, warnings
    assert "moved it aside" in warnings[0] and "state.db" in warnings[0], warnings
    expect(result, set(ALL))
    assert set(result.ran.values()) == {"no successful run recorded"}
    aside = [p for p in state_dir.glob("state.db.corrupt-*") if not p.name.endswith("-wal")]
    aside = [p for p in aside if not p.name.endswith("-shm")]
    assert len(aside) == 1, aside
    assert aside[0].read_bytes().startswith(b"this is no database")

    # The rebuilt store works: the next run skips everything.
    expect(await run_once(project), set())

    # Through the CLI as well: the warning is a JSON event, and every stage runs.
    (state_dir / "state.db").write_bytes(b"\x00garbage" * 512)
    for companion in state_dir.glob("state.db-*"):
        companion.unlink()
    done = await cli_async(["run", "--project", str(project), "--json", "-j", "1"])
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    warned = [e["message"] for e in events if e["event"] == "pipeline_warning"]
    assert len(warned) == 1 and "moved it aside" in warned[0], warned
    ran, skipped = cli_outcome(events)
    assert set(ran) == ALL and not skipped
    assert len(list(state_dir.glob("state.db.corrupt-*"))) >= 2


# ------------------------------------------------------------------ run ids


async def test_stage_started_names_its_run(make_project: ProjectFactory) -> None:
    project = make_project(CRASHY | {"data/mode.txt": "fine\n"})
    result = await run_once(project)
    run_ids = {e.get("run_id") for e in result.events if e.name == "run_started"}
    started = {e.get("run_id") for e in result.events if e.name == "stage_started"}
    assert started == run_ids == {1}
    with StateStore.open(project) as store:
        history = store.history()
        record = store.record("x")
    assert record is not None
    assert record.run_id == history[0].run_id
