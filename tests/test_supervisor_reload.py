"""Watch mode: edits that land while stages run, params edits, deleted outputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from conftest import named, supervising

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: ``slow`` waits (its own work) while ``value.SLOW`` is true; the test edits it away.
SLOW_PROJECT = {
    "pipeline.py": """
        import time
        from pathlib import Path

        from pivot_supervise import stage

        import value

        @stage(deps=["data/in.txt"], outs=["slow.txt"])
        def slow():
            if value.SLOW:
                time.sleep(30)
            Path("slow.txt").write_text(value.LABEL)
    """,
    "value.py": 'SLOW = False\nLABEL = "quick"\n',
    "data/in.txt": "x",
}

PARAMS_PROJECT = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(outs=["greeting.txt"])
        def greet(params):
            Path("greeting.txt").write_text(params["word"])

        @stage(deps=["greeting.txt"], outs=["loud.txt"])
        def shout():
            Path("loud.txt").write_text(Path("greeting.txt").read_text().upper())
    """,
    "params.toml": '[greet]\nword = "hi"\n',
}


async def test_code_edit_while_a_stage_runs_cancels_it_and_reruns_on_the_new_generation(
    make_project: ProjectFactory,
) -> None:
    project = make_project(SLOW_PROJECT)
    async with supervising(project, max_workers=1) as session:
        events = session.events
        first = await events.wait_for("generation_ready")
        await events.wait_for("run_finished")

        (project / "value.py").write_text('SLOW = True\nLABEL = "slow"\n')
        slow_gen = await events.wait_for("generation_ready")
        generation = slow_gen.get("generation")
        await events.wait_for(named("stage_started", stage="slow", generation=generation))

        (project / "value.py").write_text('SLOW = False\nLABEL = "edited"\n')
        cancelled = await events.wait_for(named("stage_finished", stage="slow"))
        assert cancelled.get("status") == "cancelled"
        assert cancelled.get("generation") in (None, slow_gen.get("generation"))
        fresh = await events.wait_for("generation_ready")
        assert set(fresh.get("workers")).isdisjoint(slow_gen.get("workers"))
        done = await events.wait_for(named("stage_finished", stage="slow"))
        assert done.get("status") == "ok"
        assert done.get("generation") == fresh.get("generation")
        assert (project / "slow.txt").read_text() == "edited"
        assert set(first.get("workers")).isdisjoint(fresh.get("workers"))


async def test_params_edit_reloads_and_reruns_with_the_new_params(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PARAMS_PROJECT)
    async with supervising(project) as session:
        events = session.events
        await events.wait_for("run_finished")
        assert (project / "loud.txt").read_text() == "HI"

        (project / "params.toml").write_text('[greet]\nword = "hello"\n')
        changed = await events.wait_for("files_changed")
        assert (changed.get("kind"), changed.get("paths")) == ("code", ["params.toml"])
        await events.wait_for("generation_ready")
        finished = await events.wait_for("run_finished")
        assert finished.get("failed") == 0
        assert (project / "loud.txt").read_text() == "HELLO"


async def test_deleting_an_output_reruns_its_producer_and_consumers(
    make_project: ProjectFactory,
) -> None:
    project = make_project(PARAMS_PROJECT)
    async with supervising(project) as session:
        events = session.events
        ready = await events.wait_for("generation_ready")
        await events.wait_for("run_finished")

        mark = events.mark()
        (project / "greeting.txt").unlink()
        started = await events.wait_for("run_started")
        assert started.get("stages") == ["greet", "shout"]
        finished = await events.wait_for("run_finished")
        assert finished.get("ok") == 2
        assert not events.since(mark, "generation_ready")
        assert (project / "greeting.txt").read_text() == "hi"
        results = [e for e in events.since(mark, "stage_finished")]
        assert {e.get("pid") for e in results} <= set(ready.get("workers"))


async def test_a_changed_params_setting_is_loaded_and_a_bad_one_keeps_the_old_generation(
    make_project: ProjectFactory,
) -> None:
    project = make_project(
        {**PARAMS_PROJECT, "loud.toml": '[greet]\nword = "hey"\n', "pivot-supervise.toml": ""}
    )
    config = project / "pivot-supervise.toml"
    async with supervising(project, max_workers=1, incremental=True) as session:
        events = session.events
        await events.wait_for("run_finished")

        config.write_text('params = "loud.toml"\n')
        await events.wait_for("generation_ready")
        ran = await events.wait_for(named("stage_finished", stage="greet"))
        assert ran.get("status") == "ok" and ran.get("reason") == "params changed"
        await events.wait_for("run_finished")
        assert (project / "loud.txt").read_text() == "HEY"

        config.write_text("max_workers = 0\n")
        failed = await events.wait_for("reload_failed")
        assert "max_workers" in failed.get("error") and "pivot-supervise.toml" in failed.get(
            "error"
        )
        assert failed.get("active_generation") == 2
