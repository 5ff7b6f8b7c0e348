"""What an in-process supervisor leaves behind once ``run()`` returned: no worker; and
nothing at all once the process released its resource trackers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from conftest import children_of, cmdline, resource_trackers, supervising

ProjectFactory = Callable[[Mapping[str, str]], Path]

#: One stage with ``max_workers=2``: generation 1 is spawned with 2 workers before the
#: pipeline is known, then replaced by a generation of 1 that is never announced.
ONE_STAGE = {
    "pipeline.py": """
        from pathlib import Path

        from pivot_supervise import stage

        @stage(outs=["a.txt"])
        def only():
            Path("a.txt").write_text("a")
    """,
}


async def test_resized_first_generation_leaves_no_worker_behind(
    make_project: ProjectFactory,
) -> None:
    # supervising() checks that no new child of this process survives (stdlib tracker aside).
    before = children_of(os.getpid())
    async with supervising(make_project(ONE_STAGE), watch=False, max_workers=2) as session:
        assert await session.wait_exit() == 0
    ready = [e for e in session.events.seen if e.name == "generation_ready"]
    assert [len(e.get("workers")) for e in ready] == [1]
    left = children_of(os.getpid()) - before - resource_trackers(children_of(os.getpid()))
    assert not left, {pid: cmdline(pid) for pid in left}


#: Runs a supervisor in a fresh interpreter, then prints the children still running.
EMBEDDED = """
import os, sys
from pathlib import Path

import trio

from pivot_supervise._config import load_config
from pivot_supervise.supervisor._core import RunOptions
from pivot_supervise.supervisor._supervisor import Supervisor
from pivot_supervise.supervisor.backends import release_process_resources

sys.path.insert(0, sys.argv[2])
from conftest import children_of, cmdline, wait_gone_blocking

async def main():
    config = load_config(Path(sys.argv[1]))
    options = RunOptions(parallel=True, max_workers=1)
    supervisor = Supervisor(config, options, watch=False, handle_signals=False)
    code = await supervisor.run()
    assert code == 0, code

trio.run(main)
release_process_resources()
left = children_of(os.getpid())
left = wait_gone_blocking(left, 0.5)
for pid in sorted(left):
    print("LEFT", pid, cmdline(pid))
"""


def test_no_child_process_outlives_run_of_an_embedded_supervisor(
    make_project: ProjectFactory,
) -> None:
    project = make_project(ONE_STAGE)
    tests_dir = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", EMBEDDED, str(project), tests_dir],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    left = [line for line in result.stdout.splitlines() if line.startswith("LEFT ")]
    assert not left, "still running after run() returned:\n" + "\n".join(left)
