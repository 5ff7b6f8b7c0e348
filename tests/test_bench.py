"""Smoke runs of the benchmarks at tiny sizes: right counts, new processes, new code.

Never timings: a loaded CI machine may be slow; what must hold anywhere is that each
restart gave fresh processes, each edit's new version was seen, every stage ran, and
nothing was left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import children_of, cmdline, kill_survivors, run_cli, wait_gone_blocking
from pivot_supervise.bench import measure_dispatch, measure_edit, measure_restart


@pytest.fixture
def no_process_left() -> Iterator[None]:
    """Every process a benchmark started is gone afterwards (trackers aside)."""
    before = children_of(os.getpid())
    yield
    new = {
        pid for pid in children_of(os.getpid()) - before if "resource_tracker" not in cmdline(pid)
    }
    left = wait_gone_blocking(new)
    kill_survivors(left)
    assert not left, {pid: cmdline(pid) for pid in left}


@pytest.mark.usefixtures("no_process_left")
def test_bench_restart_measures_every_strategy_at_every_stage_count_with_fresh_pids() -> None:
    result = measure_restart([1, 3], max_workers=2, repeat=2)

    rows = result["rows"]
    assert [(r["strategy"], r["stage_count"], r["workers"]) for r in rows] == [
        ("naive", 1, 1),
        ("cold", 1, 1),
        ("standby", 1, 1),
        ("naive", 3, 2),
        ("cold", 3, 2),
        ("standby", 3, 2),
    ]
    for row in rows:
        assert row["repeats"] == 2
        assert row["fresh_pids"], row
        for key in ("median_ms", "p90_ms", "all_ready_median_ms"):
            assert row[key] > 0, (key, row)
    assert all("refill_median_ms" in r for r in rows if r["strategy"] == "standby")
    assert result["machine"]["cpu_count"] >= 1


@pytest.mark.usefixtures("no_process_left")
def test_bench_edit_sees_every_new_version_on_new_workers() -> None:
    result = measure_edit(3, debounce_ms=20)

    assert result["edits"] == 3
    assert result["new_version_seen"], result["samples"]
    assert result["fresh_pids"], result["samples"]
    assert [s["version"] for s in result["samples"]] == ["v00001", "v00002", "v00003"]
    assert set(result["breakdown_median_ms"]) == {"detect", "load_promote", "dispatch", "run"}


@pytest.mark.usefixtures("no_process_left")
def test_bench_dispatch_runs_every_stage_both_ways() -> None:
    result = measure_dispatch(12, repeat=2)

    assert (result["stages"], result["ok"], result["failed"]) == (12, 12, 0)
    assert result["repeats"] == 2
    assert result["workers"] >= 1
    assert result["supervisor_ms"] > 0 and result["loky_ms"] > 0
    assert result["first_run_ms"] > 0, "the first run (measured apart) happened too"
    assert result["ratio"] == pytest.approx(result["supervisor_ms"] / result["loky_ms"], rel=0.01)


def test_bench_command_prints_one_json_document() -> None:
    done = run_cli(["bench", "dispatch", "--stages", "4", "--repeat", "1", "--json"])

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] == 4
    assert "machine" in document
    assert "bench: dispatch" in done.stderr, "progress goes to stderr"


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "restart", "--stages", "1,x"],
        ["bench", "restart", "--stages", "0"],
        ["bench", "edit", "--edits", "0"],
        ["bench", "nothing"],
    ],
)
def test_a_bad_bench_flag_is_a_one_line_usage_error(args: list[str]) -> None:
    done = run_cli(args)

    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_plot_without_matplotlib_says_how_to_install_it_before_measuring(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from pivot_supervise.cli import main\n"
        f"sys.exit(main(['bench', 'restart', '--plot', {str(tmp_path / 'r.png')!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 2, done.stderr
    assert "pip install 'pivot-supervise[plot]'" in done.stderr
    assert "bench: restart" not in done.stderr, "it failed before measuring anything"
    assert not (tmp_path / "r.png").exists()
