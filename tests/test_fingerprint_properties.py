"""Fingerprints over generated projects: cosmetics never count, edits count exactly where
they are reached, and every process agrees whatever its hash seed.

A generated project has a ``helpers`` module (constants with set, frozenset, dict and
tuple values, and functions that reference constants and each other, cycles included)
and a pipeline whose stages reach some helpers through ``helpers.name``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import python_json
from pivot_supervise.workers._fingerprint import fingerprint_stages, open_code_cache
from pivot_supervise.workers._graph import Graph
from pivot_supervise.workers._loader import load_pipeline

WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6)
CONSTANT_SOURCES = st.one_of(
    st.frozensets(WORDS, min_size=2, max_size=8).map(
        lambda s: "{" + ", ".join(repr(w) for w in sorted(s)) + "}"
    ),
    st.frozensets(WORDS, min_size=2, max_size=8).map(
        lambda s: "frozenset({" + ", ".join(repr(w) for w in sorted(s)) + "})"
    ),
    st.dictionaries(WORDS, st.integers(-5, 5), max_size=4).map(repr),
    st.tuples(WORDS, st.floats(allow_nan=False, allow_infinity=False), st.booleans()).map(repr),
    st.integers().map(repr),
    st.binary(max_size=6).map(repr),
)


@dataclass(frozen=True)
class Helper:
    calls: frozenset[int]
    constants: frozenset[int]
    literal: int
    words: frozenset[str]


@dataclass(frozen=True)
class Project:
    constants: tuple[str, ...]
    helpers: tuple[Helper, ...]
    stages: tuple[frozenset[int], ...]

    def files(self, *, cosmetic: bool = False, order: tuple[int, ...] | None = None) -> dict:
        """Source files; ``cosmetic`` adds comments, blank lines and docstrings and moves
        every definition to another line."""
        blocks = [f"C{i} = {value}\n" for i, value in enumerate(self.constants)]
        for i, helper in enumerate(self.helpers):
            refs = [f"h{j}" for j in sorted(helper.calls)] + [
                f"C{k}" for k in sorted(helper.constants)
            ]
            words = ", ".join(repr(w) for w in sorted(helper.words))
            doc = f'    """Helper {i}."""\n    # a comment\n\n' if cosmetic else ""
            blocks.append(
                f"def h{i}():\n{doc}    x = {{{words}}}\n"
                f"    return ({', '.join(refs)}{',' if refs else ''} x, {helper.literal})\n"
            )
        if order is not None:
            blocks = [blocks[i % len(blocks)] for i in order]
            blocks = list(dict.fromkeys(blocks))  # a permutation (duplicates dropped)
        sep = "\n\n# moved\n\n" if cosmetic else "\n"
        helpers = sep.join(blocks)
        stages = ["from pivot_supervise.pipeline._stage import stage\nimport helpers\n"]
        for s, reached in enumerate(self.stages):
            call = " + ".join(f"len(str(helpers.h{j}()))" for j in sorted(reached)) or "0"
            doc = '    "Stage docstring."\n' if cosmetic else ""
            stages.append(
                f'@stage(outs=["out{s}.txt"])\ndef s{s}():\n{doc}'
                f'    return {call} + len({{"zeta", "eta", "theta", "iota"}})\n'
            )
        return {"helpers.py": helpers, "pipeline.py": sep.join(stages)}

    def reaches(self, stage: int, helper: int) -> bool:
        seen: set[int] = set()
        todo = list(self.stages[stage])
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.helpers[current].calls)
        return helper in seen


@st.composite
def projects(draw: st.DrawFn) -> Project:
    constants = tuple(draw(st.lists(CONSTANT_SOURCES, min_size=1, max_size=4)))
    count = draw(st.integers(1, 6))
    indices = st.integers(0, count - 1)
    helpers = tuple(
        Helper(
            calls=draw(st.frozensets(indices, max_size=3)),  # cycles allowed
            constants=draw(st.frozensets(st.integers(0, len(constants) - 1), max_size=2)),
            literal=draw(st.integers(0, 1000)),
            words=draw(st.frozensets(WORDS, min_size=1, max_size=6)),
        )
        for _ in range(count)
    )
    stages = tuple(draw(st.lists(st.frozensets(indices, max_size=3), min_size=1, max_size=4)))
    return Project(constants=constants, helpers=helpers, stages=stages)


def fingerprint_codes(root: Path, files: dict[str, str]) -> dict[str, str]:
    """Write the files, load, fingerprint; check that the code cache agrees.

    The caches live in the project, so a second call in the same root (the edited or
    dressed project) finds the analyses of the first and replays its walk: both the
    loader's (in the state directory) and one of this test's own.
    """
    for name, text in files.items():
        (root / name).write_text(text)
    loaded = load_pipeline(root, "pipeline.py", "params.toml")
    walked = fingerprint_stages(loaded.functions, root)
    codes = {name: fp.code for name, fp in walked.items()}
    cache = open_code_cache(root / "cache-state")
    cached = fingerprint_stages(loaded.functions, root, cache=cache)
    cache.save()
    assert cached == walked
    assert {stage.name: stage.code_fingerprint for stage in loaded.snapshot.stages} == codes
    return codes


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(project=projects(), order=st.permutations(range(10)))
def test_cosmetic_changes_never_change_generated_fingerprints(
    project: Project, order: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = fingerprint_codes(root, project.files())
        dressed = fingerprint_codes(root, project.files(cosmetic=True, order=tuple(order)))
    assert dressed == plain


@SETTINGS
@given(first=projects(), second=projects())
def test_any_project_after_any_other_fingerprints_as_a_walk_does(
    first: Project, second: Project
) -> None:
    """Whatever a save changes (calls, constants, helpers added or gone), the replay of
    the last walk agrees with a walk afresh: ``fingerprint_codes`` checks each load."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fingerprint_codes(root, first.files())
        fingerprint_codes(root, second.files())
        fingerprint_codes(root, first.files(cosmetic=True))


@SETTINGS
@given(project=projects(), data=st.data())
def test_a_helper_edit_changes_exactly_the_stages_that_reach_it(
    project: Project, data: st.DataObject
) -> None:
    target = data.draw(st.integers(0, len(project.helpers) - 1), label="edited helper")
    helpers = list(project.helpers)
    old = helpers[target]
    helpers[target] = Helper(old.calls, old.constants, old.literal + 1, old.words)
    edited = Project(project.constants, tuple(helpers), project.stages)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        before = fingerprint_codes(root, project.files())
        after = fingerprint_codes(root, edited.files())
    expected = {f"s{s}" for s in range(len(project.stages)) if project.reaches(s, target)}
    assert {name for name in before if before[name] != after[name]} == expected


#: Runs in a fresh interpreter: fingerprint each project directory given on the command
#: line and print the codes, plus the iteration order of a set (to prove seeds differ).
#: Four ways: by the loader (its cache, in the project's state directory, was written by
#: this test's own process, so the loader replays that process's walk), with no cache,
#: and with a cache shared by the children only (the first child writes it, the others
#: replay its walk), walked afresh and replayed.
CHILD = """
import json, sys
from pathlib import Path
from pivot_supervise.workers._fingerprint import (
    ReplayStats, fingerprint_stages, open_code_cache)
from pivot_supervise.workers._loader import load_pipeline
result = {"set_order": list({"zeta", "eta", "theta", "iota", "kappa", "lambda"}),
          "codes": [], "by_loader": [], "cached": [], "replayed": [], "walked": [],
          "hits": 0, "misses": 0}
for root in map(Path, sys.argv[1:]):
    loaded = load_pipeline(root, "pipeline.py", "params.toml")
    result["by_loader"].append({s.name: s.code_fingerprint for s in loaded.snapshot.stages})
    fps = fingerprint_stages(loaded.functions, root)
    result["codes"].append({name: fp.code for name, fp in fps.items()})
    cache = open_code_cache(root / "children-cache")
    fps = fingerprint_stages(loaded.functions, root, cache=cache, replay=False)
    result["walked"].append({name: fp.code for name, fp in fps.items()})
    result["hits"] += cache.hits
    result["misses"] += cache.misses
    stats = ReplayStats()
    again = open_code_cache(root / "children-cache")  # as saved by the previous child
    fps = fingerprint_stages(loaded.functions, root, cache=again, stats=stats)
    result["cached"].append({name: fp.code for name, fp in fps.items()})
    result["replayed"].append(stats.replayed)
    cache.save()
print(json.dumps(result))
"""


def fingerprint_in_subprocess(roots: list[Path], seed: int) -> dict:
    return python_json(CHILD, *map(str, roots), env={"PYTHONHASHSEED": str(seed)})


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(projects(), min_size=6, max_size=6))
def test_fingerprints_agree_across_processes_with_different_hash_seeds(
    batch: list[Project],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        roots: list[Path] = []
        in_process: list[dict[str, str]] = []
        for i, project in enumerate(batch):
            root = Path(tmp) / f"p{i}"
            root.mkdir()
            in_process.append(fingerprint_codes(root, project.files()))
            roots.append(root)
        runs = [fingerprint_in_subprocess(roots, seed) for seed in (1, 2, 3)]
    # The seeds really do reorder sets; otherwise this test would prove nothing.
    assert len({tuple(run["set_order"]) for run in runs}) > 1
    for run in runs:
        assert run["codes"] == run["walked"] == run["cached"] == run["by_loader"] == in_process
    # The first child analysed every function and walked every graph; the others were
    # served every analysis and replayed its walks.
    assert runs[0]["misses"] > 0
    assert [(run["hits"], run["misses"]) for run in runs[1:]] == [(runs[0]["misses"], 0)] * 2
    assert runs[0]["replayed"] == [False] * len(roots)
    assert [run["replayed"] for run in runs[1:]] == [[True] * len(roots)] * 2


KEYS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=4), st.binary(max_size=3)
)
SCALARS = st.one_of(KEYS, st.floats(allow_nan=False))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(tuple),
        st.lists(inner, max_size=4),
        st.dictionaries(KEYS, inner, max_size=4),
        st.sets(KEYS, max_size=4),
        st.frozensets(KEYS, max_size=4),
    ),
    max_leaves=12,
)


def written(value: object) -> str:
    """How a walk writes a value of builtin types, spelled out item by item."""
    if isinstance(value, tuple):
        return "(" + "".join(written(item) + "," for item in value) + ")"
    if isinstance(value, list):
        return "[" + "".join(written(item) + "," for item in value) + ")"
    if isinstance(value, dict):
        return "{" + "".join(f"{written(k)}:{written(v)}," for k, v in value.items()) + "}"
    if isinstance(value, set | frozenset):
        return f"{type(value).__name__}{{" + ",".join(sorted(map(written, value))) + "}"
    return repr(value)


@given(value=VALUES)
def test_a_value_is_written_the_same_whether_its_items_are_all_scalars_or_not(
    value: object,
) -> None:
    """Containers of scalars are written in C, others item by item: both the same way,
    so that no fingerprint depends on which path a value took."""
    assert Graph({}).plain_text(value) == written(value)
