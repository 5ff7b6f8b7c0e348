"""What fingerprinting adds to loading a pipeline: 200 stages reaching 1,200 functions.

Usage::

    .venv/bin/python benchmarks/fingerprint_cost.py [--stages 200] [--functions 1200]

Writes a generated project to a temporary directory (20 helper modules of functions that
call each other across modules, with a few mutual recursions and module constants; a
pipeline whose stages each call a few helpers), then, several times over, loads it with
the real loader without fingerprints (fresh modules, compiled from source, as a new
worker does) and fingerprints the loaded stages the way the loader does by default:
open the code cache in the project's state directory, fingerprint (replaying the last
walk of the graph the cache keeps, see ``pivot_supervise.workers._replay``), save the
cache.  A validating worker saves it behind its reply, so the write is timed apart
(``write``).  Prints the medians and their ratio; the target is at most 20 % of the load
time.

The fingerprinting is the loader's own call (``fingerprint_stages``).  In a fresh process
it freezes the heap before garbage collections resume, as a validating worker does
(its heap is frozen after the load anyway); in this process it does not, so that
row also pays the collection that follows fingerprinting.

Each measurement is made with the cache in five states, in this order, so that each
state follows from the one before:

- ``none``: no cache at all (what fingerprinting cost before the cache existed);
- ``cold``: an empty state directory (a project's first load): everything compiled
  from source, analysed and walked, both caches written;
- ``warm``: nothing changed since the previous load: the walk replayed, no write;
- ``1 file saved``: a literal in one helper module of twenty edited since the previous
  load: that file's functions analysed again, the walk replayed, the stages that reach
  the edited function fingerprinted again, the file rewritten.  This is watch mode's
  steady state (a save, then a new generation of fresh workers, one of which
  fingerprints), and the figure the target is about;
- ``1 call added``: a reference added to a function some stage reaches (it now reads
  its module's constant): the graph's shape changed, so the stages that reach that function
  are followed through the graph again (what a save that adds or removes a call
  costs).  The edit is undone after the measurement.

Every fingerprinting is checked against a walk with no cache, in the same process.

The state directory also keeps the code each module compiled to, by the sha256 of its
source (``pivot_supervise.workers._bytecode``): after a project's first load, a load
compiles only the files saved since, so it is several times cheaper than a load from
source.  Two ratios are printed: fingerprinting against that load (``ratio``), and
against a load that compiles every module from source (``vs source``, the ``cold`` load),
which is what the 20 % target was set against.

Each load is measured the way a standby worker makes it: after
``prepare_for_load`` (done while the worker waits for its generation), which readies
the import machinery and reads the cache file ahead.

"fresh process" runs each load in a new interpreter, like a worker of a new generation;
"warm, in-process" repeats the loads in this process (modules purged and compiled from
source again each time, the interpreter and this package already warm).  The same
generator backs ``tests/test_fingerprint_scale.py`` (correctness only, no timing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_DIR = ".pivot-supervise"  # the loader's STATE_DIR
MODES = ("none", "cold", "warm", "1 file saved", "1 call added")


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


#: The module that the "1 file saved" mode edits, and the line it toggles (a literal).
EDITED = "mod7.py"
EDIT = ("    y = (x + 0) * 2\n", "    y = (x + 0) * 3\n")
#: What the "1 call added" mode adds to a function some stage reaches that does not read
#: its module's constant yet: a new edge in the graph.
CALL = "    y += len(SCALE)\n"

#: Load, then fingerprint as the loader does (with the cache, unless ``none``).  Runs in
#: a fresh interpreter (``python -c CHILD root mode``) and in this one (:func:`run`).
CHILD = """
import json, sys, time
from pathlib import Path
from pivot_supervise.workers._fingerprint import (
    ReplayStats, fingerprint_stages, open_code_cache)
from pivot_supervise.workers._loader import STATE_DIR, load_pipeline, prepare_for_load

def run(root, mode, freeze_heap=False):
    prepare_for_load(root)  # what a standby worker does while it waits
    start = time.perf_counter()
    loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
    middle = time.perf_counter()
    stats = ReplayStats()
    cache = None if mode == "none" else open_code_cache(root / STATE_DIR)
    fps = fingerprint_stages(loaded.functions, root, modules=loaded.modules, cache=cache,
                             stats=stats, freeze_heap=freeze_heap)
    end = time.perf_counter()
    if cache is not None:
        cache.save()
    written = time.perf_counter()
    walked = fingerprint_stages(loaded.functions, root, modules=loaded.modules)
    return {"load": middle - start, "fingerprint": end - middle, "write": written - end,
            "hits": cache.hits if cache else 0, "misses": cache.misses if cache else 0,
            "replayed": stats.replayed, "reshaped": stats.reshaped,
            "kept": stats.kept, "walked": stats.walked,
            "again": stats.stages, "agrees": fps == walked,
            "functions": {name: sorted(fp.functions) for name, fp in fps.items()},
            "codes": {name: fp.code for name, fp in fps.items()}}

if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), sys.argv[2], freeze_heap=True)))
"""


def prepare(root: Path, mode: str, reached: set[str]) -> tuple[Path, str] | None:
    """Put the cache in the state ``mode`` needs, given that the previous mode just ran
    (``reached``: the labels some stage reaches); return the edited module and the text
    to put back into it afterwards, if any."""
    if mode == "cold":
        shutil.rmtree(root / STATE_DIR, ignore_errors=True)
    elif mode == "1 file saved":
        path = root / EDITED
        text = path.read_text()
        old, new = EDIT if EDIT[0] in text else EDIT[::-1]
        path.write_text(text.replace(old, new, 1))
    elif mode == "1 call added":
        # The first function some stage reaches that does not read its constant yet.
        for label in sorted(reached):
            module, function = label.split(":")
            path = root / f"{module}.py"
            text = path.read_text()
            blocks = text.split("\ndef ")
            found = [i for i, b in enumerate(blocks) if b.startswith(f"{function}(")]
            if found and "SCALE" not in blocks[found[0]]:
                block = blocks[found[0]]
                at = block.index("    return ")
                blocks[found[0]] = block[:at] + CALL + block[at:]
                path.write_text("\ndef ".join(blocks))
                return path, text
        raise SystemExit("no function to add a call to: the project is too small")
    return None


def in_fresh_process(root: Path, mode: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout)


def in_this_process(root: Path, mode: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "fingerprint_cost_child"}
    exec(CHILD, namespace)
    return namespace["run"](root, mode)


def measure(
    root: Path,
    repeat: int,
    runner: Callable[[Path, str], dict[str, Any]],
    reached: set[str],
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for _ in range(repeat):
        for mode in MODES:
            undo = prepare(root, mode, reached)
            results[mode].append(runner(root, mode))
            if undo is not None:
                path, text = undo
                path.write_text(text)
    return results


def check(results: dict[str, list[dict[str, Any]]], expected: dict[str, set[str]]) -> None:
    """Every run reaches the right functions; the cache never changes a fingerprint; the
    replay happens where it should."""
    for mode, runs in results.items():
        for run in runs:
            assert run["agrees"], f"{mode}: the fingerprints differ from a walk's"
            if mode == "1 call added":
                assert run["replayed"] and run["reshaped"], "a new edge is a new shape"
                continue
            functions = {name: set(names) for name, names in run["functions"].items()}
            assert functions == expected, "fingerprints reach the wrong functions"
            assert run["replayed"] == (mode in ("warm", "1 file saved")), mode
    plain, saved = results["none"], results["1 file saved"]
    for i, run in enumerate(plain):
        # The same sources: the edit comes last in a round, and the next round sees it.
        assert results["cold"][i]["codes"] == run["codes"], "a cold cache changed codes"
        assert results["warm"][i]["codes"] == run["codes"], "a warm cache changed codes"
        if i:
            assert saved[i - 1]["codes"] == run["codes"], "a cache after an edit changed codes"


def describe(mode: str, run: dict[str, Any]) -> str:
    """What the run did: replayed or walked, and where its code analyses came from."""
    if mode == "none":
        return "walked, no cache"
    if run["replayed"]:
        what = "replayed, new shape" if run["reshaped"] else "replayed"
        what += f": {run['kept']} nodes kept, {run['walked']} hashed again, "
        what += f"{run['again']} stages again"
    else:
        what = f"walked: {run['walked']} nodes"
    return f"{what}; {run['hits']} analyses served, {run['misses']} made"


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
            f"functions (a stage reaches {reached:.0f} on average); medians of {args.repeat}; "
            "target: fingerprint <= 20% of the load (both ratios below)"
        )
        print(
            f"{'':17} {'cache':13} {'load':>9} {'fingerprint':>14} {'ratio':>7} "
            f"{'vs source':>9} {'write':>8}  replay; analyses"
        )
        for label, runner in (
            ("fresh process", in_fresh_process),
            ("warm, in-process", in_this_process),
        ):
            reached = set().union(*expected.values())
            results = measure(root, args.repeat, runner, reached)
            check(results, expected)
            source_ms = statistics.median(r["load"] for r in results["cold"]) * 1000
            for mode in MODES:
                runs = results[mode]
                load_ms = statistics.median(r["load"] for r in runs) * 1000
                print_ms = statistics.median(r["fingerprint"] for r in runs) * 1000
                write_ms = statistics.median(r["write"] for r in runs) * 1000
                print(
                    f"{label:17} {mode:13} {load_ms:6.1f} ms {print_ms:11.1f} ms "
                    f"{print_ms / load_ms:7.1%} {print_ms / source_ms:9.1%} "
                    f"{write_ms:5.1f} ms  {describe(mode, runs[-1])}"
                )


if __name__ == "__main__":
    main()
