"""``pivot-supervise demo``: a narrated tour on a bundled example project.

It copies ``demo/project`` (a three-stage weather pipeline) into a temporary directory,
watches it with a real supervisor and real workers, and then edits files the way a
person would: a data file (re-run on the warm workers), a helper module's code (a fresh
generation), a broken save (the last good generation keeps serving) and its fix.  Each
step checks what the supervisor did, so the demo also is a smoke test: it exits 1 if
anything behaved differently from what it narrates.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import trio

from .._config import load_config
from ..supervisor._bus import Subscription
from ..supervisor._core import RunOptions
from ..supervisor._events import Event
from ..supervisor._logging import configure_logging
from ..supervisor._sinks import human_lines, json_line
from ..supervisor._supervisor import Supervisor

#: Longest wait for any one step; a healthy machine needs well under a second.
STEP_TIMEOUT_S = 60.0


class DemoFailed(Exception):
    """The supervisor did not do what the narration says it does."""


def run_demo(*, keep: bool = False, show_json: bool = False) -> int:
    """Run the tour; returns the exit code (0 when every step behaved)."""
    configure_logging("warning")
    workspace = Path(tempfile.mkdtemp(prefix="pivot-supervise-demo-"))
    project = workspace / "weather"
    source = resources.files("pivot_supervise.demo") / "project"
    with resources.as_file(source) as source_dir:
        shutil.copytree(source_dir, project, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        return trio.run(_tour, project, show_json)
    finally:
        if keep:
            _say(f"the project is kept in {project}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


class _Narrator:
    """Prints every event as it comes and waits for the ones a step expects."""

    def __init__(self, subscription: Subscription, show_json: bool) -> None:
        self._events = subscription.events
        self._show_json = show_json

    async def wait_for(self, what: str, matches: Callable[[Event], bool]) -> Event:
        with trio.move_on_after(STEP_TIMEOUT_S):
            async for event in self._events:
                for line in human_lines(event):
                    print(f"    {line}")
                if self._show_json:
                    print(f"    {json_line(event)}")
                if event.name == "stage_finished" and event.get("status") == "failed":
                    raise DemoFailed(f"stage {event.get('stage')} failed: {event.get('error')}")
                if matches(event):
                    return event
            raise DemoFailed(f"the supervisor stopped before {what}")
        raise DemoFailed(f"no {what} within {STEP_TIMEOUT_S:.0f} s")


async def _tour(project: Path, show_json: bool) -> int:
    supervisor = Supervisor(
        load_config(project),
        RunOptions(parallel=True, max_workers=2),
        watch=True,
        handle_signals=True,
    )
    narrator = _Narrator(supervisor.bus.subscribe(), show_json)
    report = project / "reports" / "report.txt"
    failure: DemoFailed | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervisor.run)
        try:
            _say(
                f"Step 1: watching a fresh copy of a small weather pipeline in {project}.\n"
                "    Three stages, each a plain function: clean -> summarize -> report.\n"
                "    The supervisor loads the pipeline inside a generation of worker\n"
                "    processes (it never imports your code itself), then runs every stage."
            )
            ready = await narrator.wait_for("generation 1", _named("generation_ready"))
            first_pids = set(ready.get("workers"))
            await narrator.wait_for("the first run", _named("run_finished"))
            _say(f"All three stages ran. The report says: {report.read_text().strip()}")

            _say(
                "Step 2: a new reading arrives in data/raw.csv (a data change).\n"
                "    Only stages downstream of that file re-run, on the SAME warm workers:\n"
                "    no restart, no re-import."
            )
            with (project / "data" / "raw.csv").open("a") as raw:
                raw.write("Rome,30\n")
            pids = await _run_pids(narrator)
            if not pids <= first_pids:
                raise DemoFailed(f"data re-run used pids {pids}, not the warm {first_pids}")
            _say(f"Re-ran on warm pids {sorted(pids)}. The report: {report.read_text().strip()}")

            _say(
                "Step 3: someone edits report_format.py, a helper the report stage imports.\n"
                "    Code changed, so a NEW generation of workers imports it as saved,\n"
                "    proves the pipeline still loads, and only then replaces generation 1.\n"
                "    Only the stage whose code changed runs; the others are up to date."
            )
            helper = project / "report_format.py"
            original = helper.read_text()
            helper.write_text(original.replace("readings, mean", "readings, average"))
            ready = await narrator.wait_for("generation 2", _named("generation_ready"))
            new_pids = set(ready.get("workers"))
            ran = await _statuses(narrator)
            if new_pids & first_pids or "average" not in report.read_text():
                raise DemoFailed("the edited code did not run on fresh workers")
            if ran != {"clean": "skipped", "summarize": "skipped", "report": "ok"}:
                raise DemoFailed(f"expected only report to run, got {ran}")
            _say(
                f"Generation {ready.get('generation')} (pids {sorted(new_pids)}) ran the code as "
                f"saved: {report.read_text().strip()}"
            )

            _say(
                "Step 4: a broken save (a syntax error). The new generation fails to load,\n"
                "    so it is thrown away: the last good generation keeps serving."
            )
            helper.write_text(helper.read_text() + "\ndef broken(:\n")
            failed = await narrator.wait_for("the reload failure", _named("reload_failed"))
            _say(
                f"Reload refused ({failed.get('error')}); generation {ready.get('generation')} "
                "is still active. Now the fix is saved."
            )
            helper.write_text(original.replace("readings, mean", "readings, average"))
            fixed = await narrator.wait_for("the recovery", _named("generation_ready"))
            await narrator.wait_for("the re-run", _named("run_finished"))
            _say(
                f"Recovered on generation {fixed.get('generation')}; nothing had to run again: "
                "the fixed code is the code that already ran.\n    That is the whole loop: "
                "edit, save, see the result. Try it on your project: pivot-supervise watch"
            )
        except DemoFailed as exc:
            failure = exc
        finally:
            supervisor.stop()
    sys.stdout.flush()
    if failure is not None:
        _say(f"the demo failed: {failure}")
        return 1
    return supervisor.exit_code or 0


def _named(name: str) -> Callable[[Event], bool]:
    return lambda event: event.name == name


async def _statuses(narrator: _Narrator) -> dict[str, str]:
    """Each stage's status in the next run, until it finishes."""
    statuses: dict[str, str] = {}

    def collect(event: Event) -> bool:
        if event.name == "stage_finished":
            statuses[event.get("stage")] = event.get("status")
        return event.name == "run_finished"

    await narrator.wait_for("the re-run", collect)
    return statuses


async def _run_pids(narrator: _Narrator) -> set[int]:
    pids: set[int] = set()

    def collect(event: Event) -> bool:
        if event.name == "stage_finished" and event.get("pid") is not None:
            pids.add(event.get("pid"))
        if event.name == "generation_ready":
            raise DemoFailed("a data change restarted the workers")
        return event.name == "run_finished"

    await narrator.wait_for("the data re-run", collect)
    return pids
