"""Fingerprinting a large pipeline: 200 stages over 1,200 helper functions.

Correctness only (the cost is measured by ``benchmarks/fingerprint_cost.py``): every
stage reaches exactly the helpers and module constants it calls, transitively, across
modules and through mutual recursion, and nothing else.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from pivot_supervise.workers._fingerprint import fingerprint_stages
from pivot_supervise.workers._loader import load_pipeline

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "fingerprint_cost.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("fingerprint_cost_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_generator():
    return load_benchmark().make_project


def test_two_hundred_stages_reach_exactly_their_helpers(tmp_path: Path) -> None:
    expected = load_generator()(tmp_path, stages=200, functions=1200)
    loaded = load_pipeline(tmp_path, "pipeline.py", "params.toml")
    fingerprints = fingerprint_stages(loaded.functions, tmp_path)
    assert {name: set(fp.functions) for name, fp in fingerprints.items()} == expected
    assert len({fp.code for fp in fingerprints.values()}) == 200


def test_the_benchmark_runs_and_checks_what_it_measures(capsys) -> None:
    # Tiny sizes, two rounds: the benchmark's own checks (right functions reached, the
    # cache never changing a fingerprint, replays where due) run; its timings are not
    # looked at.
    load_benchmark().main(["--stages", "4", "--functions", "40", "--repeat", "2"])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 10  # five cache states, in a fresh process and in this one
    warm = [row for row in rows if row[18:].startswith("warm ")]
    assert len(warm) == 2
    assert all(" replayed: " in row and row.endswith(", 0 made") for row in warm)
