"""``watch --no-parallel`` as a real process: stages run inside the supervisor itself.

Run through the CLI because the in-process backend changes the working directory of
the whole process to the project root, which a test process should not suffer.
"""

from __future__ import annotations

import os
import py_compile
import signal
from collections.abc import Callable, Mapping
from importlib.util import cache_from_source
from pathlib import Path

from conftest import children_of, cli

ProjectFactory = Callable[[Mapping[str, str]], Path]

PROJECT = {
    "pipeline.py": """
        import os
        from pathlib import Path

        from pivot_supervise import stage

        import value

        @stage(deps=["data/in.txt"], outs=["out.txt"])
        def produce():
            Path("out.txt").write_text(f"{value.VALUE} {os.getpid()}")

        @stage(deps=["out.txt"], outs=["copy.txt"])
        def copy():
            Path("copy.txt").write_text(Path("out.txt").read_text())
    """,
    "value.py": 'VALUE = "old"\n',
    "data/in.txt": "x",
}


def test_no_parallel_runs_inline_and_reloads_edited_code_without_workers(
    make_project: ProjectFactory, tmp_path: Path
) -> None:
    project = make_project(PROJECT)
    args = ["watch", "--json", "--no-parallel", "--project", str(project)]
    with cli(args, tmp_path) as process:
        supervisor_pid = process.proc.pid
        started = process.wait_for("supervisor_started")
        assert started["parallel"] is False
        first = process.wait_for("generation_ready")
        assert first["workers"] == []
        assert process.wait_for("run_finished")["ok"] == 2
        assert (project / "copy.txt").read_text() == f"old {supervisor_pid}"
        results = [e for e in process.events if e["event"] == "stage_finished"]
        assert {e["pid"] for e in results} == {supervisor_pid}
        assert children_of(supervisor_pid) == set(), "--no-parallel started processes"

        (project / "value.py").write_text('VALUE = "new and longer"\n')
        second = process.wait_for("generation_ready")
        assert second["generation"] == first["generation"] + 1
        assert second["workers"] == []
        assert second["trigger"] == "code change"
        finished = process.wait_for("run_finished")
        assert (finished["ok"], finished["failed"]) == (2, 0)
        assert (project / "copy.txt").read_text() == f"new and longer {supervisor_pid}"
        assert children_of(supervisor_pid) == set()

        # A same-size rewrite that keeps the mtime, over a pyc that then looks fresh.
        module = project / "value.py"
        py_compile.compile(str(module), cfile=cache_from_source(str(module)), doraise=True)
        before = module.stat()
        module.write_text('VALUE = "NEW AND LONGER"\n')
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert module.stat().st_size == before.st_size
        third = process.wait_for("generation_ready")
        assert third["generation"] == second["generation"] + 1
        assert process.wait_for("run_finished")["ok"] == 2
        assert (project / "copy.txt").read_text() == f"NEW AND LONGER {supervisor_pid}"

        process.proc.send_signal(signal.SIGINT)
        assert process.wait(5.0) == 0, process.stderr()
