"""How long deciding that a large pipeline is up to date takes.

Usage::

    .venv/bin/python benchmarks/decide_cost.py [--stages 200] [--files 1000]

Writes a temporary project with ``--files`` dependency files spread over ``--stages``
stages, records every stage as freshly successful in a real state store, then asks the
real :class:`~pivot_supervise.supervisor._incremental.Incremental` whether each stage
must run, three times: with a fresh process's empty hash cache (every file read), again
with the warm stat cache (no file read), and again from a cache reloaded from the store
(as the next ``pivot-supervise run`` would).  Every decision must be "unchanged".  The
target is at most 1 s for the first; the others should be much cheaper.  Times are
medians of ``--repeat`` runs; ratios are against the first decision of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pivot_supervise.pipeline._model import StageOutcome, StageSpec
from pivot_supervise.supervisor._incremental import Incremental

#: Let the racy-clean rule trust every entry: the files were written "long ago".
AGE_S = 10


def make_project(root: Path, stages: int, files: int) -> list[StageSpec]:
    data = root / "data"
    data.mkdir(parents=True)
    past = time.time() - AGE_S
    for i in range(files):
        path = data / f"f{i:05}.csv"
        path.write_text(f"row,{i}\n" * 50)
        os.utime(path, (past, past))
    per_stage = max(1, files // stages)
    specs: list[StageSpec] = []
    for s in range(stages):
        deps = tuple(f"data/f{i:05}.csv" for i in range(s * per_stage, (s + 1) * per_stage))
        out = f"out/s{s}.txt"
        (root / "out").mkdir(exist_ok=True)
        (root / out).write_text(str(s))
        os.utime(root / out, (past, past))
        specs.append(
            StageSpec(
                name=f"s{s}",
                module="pipeline",
                deps=deps,
                outs=(out,),
                code_fingerprint=f"code-{s}",
                params_digest="params",
            )
        )
    return specs


def decide_all(incremental: Incremental, specs: list[StageSpec]) -> float:
    started = time.perf_counter()
    for spec in specs:
        check = incremental.check(spec)
        if check.decision.run:
            raise SystemExit(f"{spec.name} should be up to date: {check.decision.reasons}")
    return (time.perf_counter() - started) * 1000


def measure(stages: int, files: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pivot-supervise-decide-") as tmp:
        root = Path(tmp)
        specs = make_project(root, stages, files)
        recorder = Incremental.open(root)
        for spec in specs:
            check = recorder.check(spec)
            outcome = StageOutcome(spec.name, 1, 0, "ok", 1.0)
            recorder.after_success(spec, check, outcome, run_id=0)
        recorder.store.save_hash_cache([])  # as if no run had ever cached a hash
        recorder.store.close()

        first = Incremental.open(root)
        uncached_ms = decide_all(first, specs)
        warm_ms = decide_all(first, specs)
        first.close()  # persists the hash cache, as a supervisor does on exit
        reloaded = Incremental.open(root)
        reloaded_ms = decide_all(reloaded, specs)
        reloaded.close()
    return {"uncached_ms": uncached_ms, "warm_ms": warm_ms, "reloaded_ms": reloaded_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = []
    for i in range(args.repeat):
        print(f"repeat {i + 1}/{args.repeat}", file=sys.stderr)
        runs.append(measure(args.stages, args.files))
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    if args.json:
        print(json.dumps({"stages": args.stages, "files": args.files, **medians}))
        return
    base = medians["uncached_ms"]
    print(f"{args.stages} stages, {args.files} dependency files, all up to date")
    for key, value in medians.items():
        print(f"  {key:<12} {value:8.1f} ms   ratio {value / base:5.2f}")
    print("target: at most 1000 ms for the uncached decision")


if __name__ == "__main__":
    main()
