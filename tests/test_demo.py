"""``pivot-supervise demo`` is a smoke test of its own: it exits 0 only if every step
did what its narration claims (warm pids for data, fresh pids for code, only the changed
stage re-run, a broken save refused, recovery)."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_runs_every_step_and_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pivot_supervise", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("Step 1", "Step 2", "Step 3", "Step 4", "Recovered on generation"):
        assert step in done.stdout
    assert "Traceback" not in done.stderr
