"""The cache of code analyses: it saves time, and it never changes a fingerprint.

Every test writes a real project, loads it with the real loader and fingerprints it with
a cache opened on a real state directory, against the same fingerprints computed with no
cache at all.  Hits and misses are read from the cache's counters, never from timings.
"""

from __future__ import annotations

import marshal
import os
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import pytest

from conftest import LOUD_GLOBAL, python_json
from pivot_supervise._state_dir import seal, unseal
from pivot_supervise.pipeline._freshness import NOT_FINGERPRINTED
from pivot_supervise.workers._codecache import _MAGIC, CodeAnalysisCache
from pivot_supervise.workers._fingerprint import (
    fingerprint_stages,
    open_code_cache,
    prepare_fingerprints,
)
from pivot_supervise.workers._loader import STATE_DIR, load_pipeline

HEADER = "from pivot_supervise.pipeline._stage import stage\n"

PIPELINE = """
    import helpers

    @stage(outs=["a.txt"])
    def a():
        return helpers.shared(1)

    @stage(outs=["b.txt"])
    def b():
        return helpers.only_b()
"""

HELPERS = """
    def shared(x):
        return x + 1

    def only_b():
        return [i * 2 for i in range(3)]
"""


def write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        body = textwrap.dedent(text)
        (root / name).write_text(HEADER + body if name == "pipeline.py" else body)


def fingerprints(root: Path, cache: CodeAnalysisCache | None = None) -> dict[str, str]:
    """Load the project as it is on disk; fingerprint it with ``cache`` (and save it).

    Always a full walk, which looks every analysis up: the replay of the last walk,
    which the file keeps too, has tests of its own (``test_fingerprint_replay.py``).
    """
    loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
    prints = fingerprint_stages(
        loaded.functions, root, modules=loaded.modules, cache=cache, replay=False
    )
    if cache is not None:
        cache.save()
    return {name: fp.code for name, fp in prints.items()}


def cached_and_uncached(root: Path, state: Path) -> tuple[dict[str, str], CodeAnalysisCache]:
    """Fingerprints with the cache in ``state``, checked against those with no cache."""
    cache = open_code_cache(state)
    cached = fingerprints(root, cache)
    assert cached == fingerprints(root)
    return cached, cache


def cache_file(state: Path) -> Path:
    (path,) = state.glob("code-analyses.*.bin")
    return path


def test_a_warm_cache_gives_the_same_fingerprints_without_analysing_again(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    state = tmp_path / "state"
    cold, first = cached_and_uncached(tmp_path, state)
    warm, second = cached_and_uncached(tmp_path, state)
    assert warm == cold
    assert (first.hits, first.misses) == (0, 4)  # a, b, shared, only_b
    assert (second.hits, second.misses) == (4, 0)


def test_only_the_code_of_an_edited_file_is_analysed_again(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    state = tmp_path / "state"
    before, _ = cached_and_uncached(tmp_path, state)
    write(tmp_path, {"helpers.py": HELPERS.replace("x + 1", "x + 2")})
    after, cache = cached_and_uncached(tmp_path, state)
    assert after["a"] != before["a"]
    assert after["b"] == before["b"]
    # The pipeline's two stages are served; both helpers are analysed again, since
    # what names a code object is the exact source of its file.
    assert (cache.hits, cache.misses) == (2, 2)


EDITS = {
    "a function body": (
        "def helper():\n    return 1\n",
        "def helper():\n    return 2\n",
    ),
    "a constant in one of two lambdas on one line": (
        "first = lambda: 1; second = lambda: 2\ndef helper():\n    return second()\n",
        "first = lambda: 1; second = lambda: 3\ndef helper():\n    return second()\n",
    ),
    "a nested function": (
        "def helper():\n    def inner():\n        return 1\n    return inner()\n",
        "def helper():\n    def inner():\n        return 2\n    return inner()\n",
    ),
    "a comprehension": (
        "def helper():\n    return [x * 2 for x in range(3)]\n",
        "def helper():\n    return [x * 3 for x in range(3)]\n",
    ),
    "a closure made by a decorator": (
        "def deco(f):\n    def wrapper():\n        return f() + 1\n    return wrapper\n"
        "@deco\ndef helper():\n    return 1\n",
        "def deco(f):\n    def wrapper():\n        return f() + 2\n    return wrapper\n"
        "@deco\ndef helper():\n    return 1\n",
    ),
}

USES_HELPER = """
    import helpers

    @stage(outs=["a.txt"])
    def a():
        return helpers.helper()
"""


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edit_changes_the_fingerprint_with_a_warm_cache(tmp_path: Path, edit: str) -> None:
    before_source, after_source = EDITS[edit]
    state = tmp_path / "state"
    write(tmp_path, {"pipeline.py": USES_HELPER, "helpers.py": before_source})
    before, _ = cached_and_uncached(tmp_path, state)
    cached_and_uncached(tmp_path, state)  # every analysis is in the file now
    write(tmp_path, {"helpers.py": after_source})
    after, cache = cached_and_uncached(tmp_path, state)
    assert after != before
    assert cache.hits == 1  # the stage itself: pipeline.py did not change


def test_code_compiled_outside_the_loader_is_never_served_from_the_cache(tmp_path: Path) -> None:
    # Code compiled from another file's text under the helper file's own name: it
    # claims ``helpers.py`` (and matches its first function by name, line and columns)
    # but was not compiled from it.  Only ``snippet.txt`` changes.
    helpers = """
        from pathlib import Path

        def helper():
            return 1

        namespace = {"__name__": __name__}
        snippet = Path(__file__).with_name("snippet.txt").read_text()
        exec(compile(snippet, __file__, "exec"), namespace)
        made = namespace["helper"]
    """
    pipeline = """
        import helpers

        @stage(outs=["a.txt"])
        def a():
            return helpers.made()
    """
    state = tmp_path / "state"
    write(tmp_path, {"pipeline.py": pipeline, "helpers.py": helpers})
    (tmp_path / "snippet.txt").write_text("\n\n\ndef helper():\n    return 1\n")
    before, _ = cached_and_uncached(tmp_path, state)
    (tmp_path / "snippet.txt").write_text("\n\n\ndef helper():\n    return 2\n")
    after, cache = cached_and_uncached(tmp_path, state)
    assert after != before
    assert (cache.hits, cache.unnamed) == (1, 1)  # the stage; the snippet's helper


def test_entries_no_load_uses_any_more_are_dropped_from_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    cached_and_uncached(tmp_path, state)
    write(tmp_path, {"helpers.py": HELPERS.replace("x + 1", "x + 2")})
    cached_and_uncached(tmp_path, state)  # rewrites the file with the new helpers only
    write(tmp_path, {"helpers.py": HELPERS})
    _, cache = cached_and_uncached(tmp_path, state)
    assert (cache.hits, cache.misses) == (2, 2)


def damaged(data: bytes) -> dict[str, bytes]:
    middle = len(data) // 2
    return {
        "empty": b"",
        "truncated": data[:middle],
        "garbage": os.urandom(len(data)),
        "one flipped byte": data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :],
        "zeros": bytes(len(data)),
    }


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "one flipped byte", "zeros"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    expected, _ = cached_and_uncached(tmp_path, state)
    path = cache_file(state)
    path.write_bytes(damaged(path.read_bytes())[damage])
    prints, cache = cached_and_uncached(tmp_path, state)
    assert prints == expected
    assert (cache.hits, cache.misses) == (0, 4)
    _, again = cached_and_uncached(tmp_path, state)
    assert (again.hits, again.misses) == (4, 0)


def test_a_file_of_another_analysis_version_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    loaded = load_pipeline(tmp_path, "pipeline.py", "params.toml", fingerprints=False)
    other = CodeAnalysisCache.open(state, (0, "another algorithm"))
    fingerprint_stages(loaded.functions, tmp_path, cache=other)
    other.save()
    _, cache = cached_and_uncached(tmp_path, state)
    assert (cache.hits, cache.misses) == (0, 4)


def test_an_unwritable_state_directory_costs_time_not_an_error(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    # The loader's own state directory blocked too (it also keeps compiled code there).
    (tmp_path / STATE_DIR).write_text("not a directory\n")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the state directory should be\n")
    expected = fingerprints(tmp_path)
    prints, cache = cached_and_uncached(tmp_path, blocked)
    assert prints == expected
    assert cache.write_error is not None
    loaded = load_pipeline(tmp_path, "pipeline.py", "params.toml")
    assert {s.name: s.code_fingerprint for s in loaded.snapshot.stages} == expected


def test_the_loader_keeps_the_cache_in_the_state_directory(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    first = load_pipeline(tmp_path, "pipeline.py", "params.toml")
    path = cache_file(tmp_path / STATE_DIR)
    written = path.stat()
    second = load_pipeline(tmp_path, "pipeline.py", "params.toml")
    # Nothing new was analysed, so the file was not written again (a write replaces it).
    assert path.stat().st_ino == written.st_ino
    assert second.snapshot.stages == first.snapshot.stages
    cache = open_code_cache(tmp_path / STATE_DIR)
    assert fingerprints(tmp_path, cache) == fingerprints(tmp_path)
    assert (cache.hits, cache.misses) == (4, 0)


def test_a_cache_read_ahead_is_served_while_its_file_is_unchanged(tmp_path: Path) -> None:
    """A standby worker reads the cache while it waits; its load then uses that read."""
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    state = tmp_path / "state"
    cached_and_uncached(tmp_path, state)
    prepare_fingerprints(state)
    # Garbage in place, with the same inode, size and mtime: only a second read sees it.
    path = cache_file(state)
    before = path.stat()
    with path.open("r+b") as file:
        file.write(b"\0" * before.st_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    _, served = cached_and_uncached(tmp_path, state)
    assert (served.hits, served.misses) == (4, 0), "the read-ahead cache was not served"


def test_a_cache_read_ahead_is_read_again_once_another_load_wrote_it(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    state = tmp_path / "state"
    cached_and_uncached(tmp_path, state)
    prepare_fingerprints(state)
    helpers = tmp_path / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n\ndef unused():\n    return 0\n")
    before = cache_file(state).stat()
    fingerprint_in_child(tmp_path, state)  # another worker's load saves it
    after = cache_file(state).stat()
    assert after.st_ino != before.st_ino, "the other load must have written the file"

    _, again = cached_and_uncached(tmp_path, state)
    assert (again.hits, again.misses) == (4, 0), "the load read the stale read-ahead"


#: Fingerprints in a fresh interpreter, with the cache in argv[2] and without any.
CHILD = """
import json, sys
from pathlib import Path
from pivot_supervise.workers._fingerprint import fingerprint_stages, open_code_cache
from pivot_supervise.workers._loader import load_pipeline
root, state = Path(sys.argv[1]), Path(sys.argv[2])
loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
cache = open_code_cache(state)
cached = fingerprint_stages(loaded.functions, root, cache=cache)
cache.save()
plain = fingerprint_stages(loaded.functions, root)
print(json.dumps({
    "cached": {name: fp.code for name, fp in cached.items()},
    "plain": {name: fp.code for name, fp in plain.items()},
    "hits": cache.hits,
    "misses": cache.misses,
}))
"""


def fingerprint_in_child(root: Path, state: Path, *options: str) -> dict:
    return python_json(CHILD, str(root), str(state), options=options)


def test_without_debug_ranges_two_lambdas_on_one_line_are_still_told_apart(
    tmp_path: Path,
) -> None:
    # With ``-X no_debug_ranges`` the line table has no columns: a cache keyed by name,
    # line and line table would confuse ``first`` and ``second`` here.
    before_source, after_source = EDITS["a constant in one of two lambdas on one line"]
    state = tmp_path / "state"
    write(tmp_path, {"pipeline.py": USES_HELPER, "helpers.py": before_source})
    no_ranges = ("-X", "no_debug_ranges")
    cold = fingerprint_in_child(tmp_path, state, *no_ranges)
    warm = fingerprint_in_child(tmp_path, state, *no_ranges)
    write(tmp_path, {"helpers.py": after_source})
    edited = fingerprint_in_child(tmp_path, state, *no_ranges)
    for run in (cold, warm, edited):
        assert run["cached"] == run["plain"]
    assert warm["misses"] == 0
    assert edited["cached"] != warm["cached"]
    # And a process with debug ranges reads the same file and agrees.
    assert fingerprint_in_child(tmp_path, state)["cached"] == edited["cached"]


def test_a_load_can_leave_the_save_to_a_background_thread(tmp_path: Path) -> None:
    """What a validating worker does: answer first, write the cache file behind."""
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    state = tmp_path / STATE_DIR
    loaded = load_pipeline(tmp_path, "pipeline.py", "params.toml", save_cache=False)
    unsaved = loaded.unsaved_cache
    assert unsaved is not None
    assert not list(state.glob("code-analyses.*.bin")), "save_cache=False wrote the file"
    thread = unsaved.save_in_background()
    assert thread is not None
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert unsaved.write_error is None
    cache = open_code_cache(state)
    assert fingerprints(tmp_path, cache) == fingerprints(tmp_path)
    assert (cache.hits, cache.misses) == (4, 0)
    # Nothing new the next time: no thread at all.
    again = load_pipeline(tmp_path, "pipeline.py", "params.toml", save_cache=False)
    assert again.unsaved_cache is not None
    assert again.unsaved_cache.save_in_background() is None


def rewrite_cache(state: Path, change: Callable[[dict[object, object], object], tuple]) -> None:
    """Rewrite the cache file as this code would seal it, with ``change(entries,
    graph)`` for its entries and graph: a file that reads as healthy, but does not
    hold together (only a bug could write one)."""
    path = cache_file(state)
    payload = unseal(_MAGIC, path.read_bytes())
    assert payload is not None
    header, entries, graph = marshal.loads(payload)
    path.write_bytes(seal(_MAGIC, marshal.dumps((header, *change(entries, graph)))))


def stage_codes(root: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    loaded = load_pipeline(root, "pipeline.py", "params.toml")
    codes = {spec.name: spec.code_fingerprint for spec in loaded.snapshot.stages}
    return codes, loaded.snapshot.warnings


def test_a_kept_walk_that_does_not_hold_together_is_walked_afresh(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    expected, _ = stage_codes(tmp_path)

    def stages_out_of_range(entries: dict[object, object], graph: object) -> tuple:
        fields = list(cast("tuple[object, ...]", graph))
        stages = cast("dict[str, tuple[object, ...]]", fields[-2])
        fields[-2] = {name: (10**6, *record[1:]) for name, record in stages.items()}
        return entries, tuple(fields)

    rewrite_cache(tmp_path / STATE_DIR, stages_out_of_range)
    codes, warnings = stage_codes(tmp_path)
    assert codes == expected
    (warning,) = warnings
    assert "did not hold together" in warning and "IndexError" in warning
    assert stage_codes(tmp_path) == (expected, ())  # the walk afresh was kept instead


def test_analyses_that_cannot_be_used_are_removed_with_their_file(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    expected, _ = stage_codes(tmp_path)

    def nonsense(entries: dict[object, object], graph: object) -> tuple:
        mangled = {
            digest: dict.fromkeys(cast("dict[object, object]", positions), (0, (), (), ()))
            for digest, positions in entries.items()
        }
        return mangled, None  # no walk kept: the next load walks, with the analyses

    state = tmp_path / STATE_DIR
    rewrite_cache(state, nonsense)
    codes, warnings = stage_codes(tmp_path)
    assert codes == expected
    (warning,) = warnings
    assert "could not be used" in warning and "was removed" in warning
    assert not list(state.glob("code-analyses.*.bin"))
    assert stage_codes(tmp_path) == (expected, ())
    assert cache_file(state).exists()


UNREADABLE = LOUD_GLOBAL + textwrap.dedent(
    """
    def shared(x):
        return x + 1

    def only_b():
        return len([1, 2])
    """
)


def test_code_that_cannot_be_fingerprinted_runs_every_time_and_says_why(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": UNREADABLE})
    first, warnings = stage_codes(tmp_path)
    (warning,) = warnings
    assert warning.startswith("could not fingerprint the pipeline's code (ValueError")
    assert "helpers.py" in warning  # where it was raised
    assert all(code.startswith(NOT_FINGERPRINTED) for code in first.values())
    second, _ = stage_codes(tmp_path)
    assert set(first.values()).isdisjoint(second.values()), "it must never look unchanged"
