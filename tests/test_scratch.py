"""Generation scratch directories: private, in memory where possible, swept when orphaned."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from conftest import serving_backend
from pivot_supervise.supervisor.backends._scratch import scratch_dir, sweep_abandoned


def test_a_scratch_directory_is_private_and_names_its_supervisor() -> None:
    directory = scratch_dir("g7")
    try:
        assert directory.is_dir()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert directory.name.startswith(f"pivot-supervise-{os.getpid()}-g7-")
    finally:
        shutil.rmtree(directory)


def test_the_directories_of_dead_supervisors_are_swept_and_live_ones_kept() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    mine = scratch_dir("g1")
    root = mine.parent
    orphan = root / f"pivot-supervise-{dead_pid}-g3-abcdef"
    orphan.mkdir()
    (orphan / "validated.pickle").write_bytes(b"source")
    unrelated = root / f"someone-else-{dead_pid}-g3"
    unrelated.mkdir()
    try:
        removed = sweep_abandoned()
        assert orphan in removed
        assert not orphan.exists()
        assert mine.is_dir(), "a live supervisor's directory is never swept"
        assert unrelated.is_dir(), "only our own names are swept"
    finally:
        for path in (mine, orphan, unrelated):
            shutil.rmtree(path, ignore_errors=True)


async def test_a_load_cancelled_before_its_generation_exists_leaves_no_directory(
    make_project: Callable[[Mapping[str, str]], Path],
) -> None:
    """A session that ends just as a reload starts: nothing will retire that load."""
    project = make_project({"pipeline.py": "from pivot_supervise import stage\n"})
    probe = scratch_dir("probe")
    root = probe.parent
    shutil.rmtree(probe)
    mine = f"pivot-supervise-{os.getpid()}-g1-*"
    async with serving_backend(project, standby=False) as backend:
        with trio.CancelScope() as scope:
            scope.cancel()
            await backend.load(1, 1)
        assert scope.cancelled_caught, "the load was meant to be cancelled"
        assert not list(root.glob(mine)), "the cancelled load left its scratch directory"
