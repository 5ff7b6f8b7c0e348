"""What fingerprinting adds to loading a pipeline: 200 stages reaching 1,200 functions.

Usage::

    .venv/bin/python benchmarks/fingerprint_cost.py [--stages 200] [--functions 1200]

Writes a generated project to a temporary directory (20 helper modules of functions that
call each other across modules, with a few mutual recursions and module constants; a
pipeline whose stages each call a few helpers), then, several times over, loads it with
the real loader without fingerprints (fresh modules, compiled from source, as a new
worker does) and fingerprints the loaded stages, which is exactly what the loader adds by
default.  Prints the medians and their ratio; the target is at most 20 % of the load
time.  The same generator backs ``tests/test_fingerprint_scale.py``
(correctness only, no timing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_project(
    root: Path, *, stages: int = 200, functions: int = 1200, modules: int = 20, seed: int = 0
) -> dict[str, set[str]]:
    """Write the project; return, per stage, the labels it should reach."""
    rng = random.Random(seed)
    per_module = functions // modules
    calls: dict[str, list[str]] = {}
    uses_constant: dict[str, bool] = {}
    for m in range(modules):
        lines = [f"SCALE = {{{', '.join(repr(f'k{i}') for i in range(5))}}}\n"]
        imports = sorted({rng.randrange(m) for _ in range(3)} if m else set())
        lines[:0] = [f"import mod{j}\n" for j in imports]
        for k in range(per_module):
            name = f"mod{m}:f{m}_{k}"
            targets: list[str] = []
            if k and rng.random() < 0.6:
                targets.append(f"mod{m}:f{m}_{rng.randrange(k)}")
            if imports and rng.random() < 0.5:
                j = rng.choice(imports)
                targets.append(f"mod{j}:f{j}_{rng.randrange(per_module)}")
            if k + 1 < per_module and rng.random() < 0.05:  # mutual recursion
                targets.append(f"mod{m}:f{m}_{k + 1}")
            calls[name] = targets
            uses_constant[name] = rng.random() < 0.3
            body = [
                f"def f{m}_{k}(x=0):",
                f'    """Helper {k} of module {m}."""',
                f"    y = (x + {k}) * 2",
            ]
            for target in targets:
                module, function = target.split(":")
                call = function if module == f"mod{m}" else f"{module}.{function}"
                body.append(f"    y += {call}(0) if x > 100 else 0")
            if uses_constant[name]:
                body.append("    y += len(SCALE)")
            body.append("    return [i * y for i in range(3)]\n")
            lines.append("\n".join(body) + "\n")
        (root / f"mod{m}.py").write_text("\n".join(lines))

    pipeline = ["from pivot_supervise.pipeline._stage import stage\n"]
    pipeline += [f"import mod{m}\n" for m in range(modules)]
    expected: dict[str, set[str]] = {}
    for s in range(stages):
        reached = [
            f"mod{m}:f{m}_{rng.randrange(per_module)}" for m in rng.sample(range(modules), 3)
        ]
        calls_text = " + ".join(f"{t.split(':')[0]}.{t.split(':')[1]}()[0]" for t in reached)
        pipeline.append(f'@stage(outs=["out/s{s}.txt"])\ndef s{s}():\n    return {calls_text}\n')
        seen: set[str] = set()
        todo = list(reached)
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(calls[current])
        labels = {f"pipeline:s{s}"} | seen
        labels |= {f"{name.split(':')[0]}:SCALE" for name in seen if uses_constant[name]}
        expected[f"s{s}"] = labels
    (root / "pipeline.py").write_text("\n".join(pipeline))
    return expected


#: Runs in a fresh interpreter, like a worker of a new generation: load, then fingerprint.
CHILD = """
import json, sys, time
from pathlib import Path
from pivot_supervise.workers._fingerprint import fingerprint_stages
from pivot_supervise.workers._loader import load_pipeline
root = Path(sys.argv[1])
start = time.perf_counter()
loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
middle = time.perf_counter()
fps = fingerprint_stages(loaded.functions, root)  # what the loader adds by default
end = time.perf_counter()
print(json.dumps({"load": middle - start, "fingerprint": end - middle,
                  "functions": {name: list(fp.functions) for name, fp in fps.items()}}))
"""


def measure_fresh(root: Path, repeat: int) -> tuple[list[float], list[float], dict[str, set[str]]]:
    loads: list[float] = []
    prints: list[float] = []
    functions: dict[str, set[str]] = {}
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(root)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        result = json.loads(done.stdout)
        loads.append(result["load"])
        prints.append(result["fingerprint"])
        functions = {name: set(names) for name, names in result["functions"].items()}
    return loads, prints, functions


def measure_warm(root: Path, repeat: int) -> tuple[list[float], list[float], dict[str, set[str]]]:
    from pivot_supervise.workers._fingerprint import fingerprint_stages
    from pivot_supervise.workers._loader import load_pipeline

    loads: list[float] = []
    prints: list[float] = []
    functions: dict[str, set[str]] = {}
    for _ in range(repeat):
        start = time.perf_counter()
        loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
        middle = time.perf_counter()
        fps = fingerprint_stages(loaded.functions, root)
        end = time.perf_counter()
        loads.append(middle - start)
        prints.append(end - middle)
        functions = {name: set(fp.functions) for name, fp in fps.items()}
    return loads, prints, functions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--functions", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expected = make_project(root, stages=args.stages, functions=args.functions)
        reached = statistics.mean(len(v) for v in expected.values())
        print(
            f"python {sys.version.split()[0]}: {args.stages} stages, {args.functions} "
            f"functions (a stage reaches {reached:.0f} on average); medians of {args.repeat}"
        )
        for mode, measure in (("fresh process", measure_fresh), ("warm, in-process", measure_warm)):
            loads, prints, functions = measure(root, args.repeat)
            assert functions == expected, "fingerprints reach the wrong functions"
            load_ms = statistics.median(loads) * 1000
            print_ms = statistics.median(prints) * 1000
            print(
                f"{mode:17} load {load_ms:6.1f} ms  fingerprint {print_ms:6.1f} ms  "
                f"ratio {print_ms / load_ms:6.1%} (target <= 20%)"
            )


if __name__ == "__main__":
    main()
