"""Replaying the last fingerprinting: the same fingerprints as a walk, whatever changed.

Every test writes a real project, loads it with the real loader and fingerprints it with
the code cache of a real state directory (which keeps the last walk), then checks the
result against a full walk of the same loaded functions with no cache at all.  Whether
the walk was replayed, and how many stages were fingerprinted again, is read from
:class:`ReplayStats`, never from timings.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from conftest import python_json
from pivot_supervise.workers._fingerprint import (
    ReplayStats,
    StageFingerprint,
    fingerprint_stages,
    open_code_cache,
)
from pivot_supervise.workers._loader import load_pipeline

PIPELINE = """
    from pivot_supervise.pipeline._stage import stage
    import helpers
    from helpers import THRESHOLD, scale
    from math import sqrt
    from os.path import basename

    @stage(outs=["a.txt"])
    def a():
        return helpers.double(1) + scale(2)

    @stage(outs=["b.txt"])
    def b():
        return helpers.Model().predict(THRESHOLD) + sqrt(4) + len(basename("x"))

    @stage(outs=["c.txt"])
    def c():
        return helpers.unrelated()
"""

HELPERS = """
    import functools
    import os

    THRESHOLD = 3
    MODE = os.environ.get("PIVOT_TEST_MODE", "slow")

    def double(x, factor=2):
        return x * factor

    def scale(x):
        return double(x) * THRESHOLD + len("")

    def _fast(x):
        return x

    def _slow(x):
        return x + 0

    pick = _fast if MODE == "fast" else _slow

    class Model:
        def predict(self, x):
            return pick(x) + double(x)

    def logged(f):
        @functools.wraps(f)
        def wrapper(*args):
            return f(*args)
        return wrapper

    @logged
    def unrelated():
        return 1
"""


def write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))


def fingerprint(root: Path) -> tuple[dict[str, StageFingerprint], ReplayStats]:
    """Fingerprint the project on disk with its state directory's cache (and save it),
    checked against a full walk with no cache."""
    loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
    cache = open_code_cache(root / "state")
    stats = ReplayStats()
    prints = fingerprint_stages(
        loaded.functions, root, modules=loaded.modules, cache=cache, stats=stats
    )
    cache.save()
    walked = fingerprint_stages(loaded.functions, root, modules=loaded.modules)
    assert prints == walked, "the replay disagrees with a walk"
    return prints, stats


def changed(before: Mapping[str, StageFingerprint], after: Mapping[str, StageFingerprint]) -> set:
    return {name for name in after if before.get(name) != after[name]}


def test_an_unchanged_project_is_replayed_without_fingerprinting_any_stage(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    first, walk = fingerprint(tmp_path)
    second, replay = fingerprint(tmp_path)
    assert second == first
    assert not walk.replayed
    assert replay.replayed
    assert replay.stages == 0
    # Plain functions are kept as recorded; the rest (constants, the class, the
    # decorator's wrapper) are serialised again, and come out the same.
    assert replay.kept > 0
    assert replay.kept + replay.walked == walk.walked


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


#: name: (file, old text, new text, the stages whose fingerprint changes, and whether
#: the graph's shape changes: edges, or nodes found anew)
EDITS: dict[str, tuple[str, str, str, set[str], bool]] = {
    "a comment": (
        "helpers.py",
        "THRESHOLD = 3\n",
        "# tuned by hand\nTHRESHOLD = 3\n",
        set(),
        False,
    ),
    "a function body": (
        "helpers.py",
        "return x * factor",
        "return x * factor + 0",
        {"a", "b"},
        False,
    ),
    "a default argument": ("helpers.py", "factor=2", "factor=3", {"a", "b"}, False),
    "a module constant": ("helpers.py", "THRESHOLD = 3", "THRESHOLD = 4", {"a", "b"}, False),
    "a method": ("helpers.py", "pick(x) + double(x)", "pick(x) - double(x)", {"b"}, False),
    "a decorated function": ("helpers.py", "    return 1\n", "    return 2\n", {"c"}, False),
    "a builtin function bound": (
        "pipeline.py",
        "from math import sqrt",
        "from math import floor as sqrt",
        {"b"},
        False,
    ),
    "a library function bound": (
        "pipeline.py",
        "from os.path import basename",
        "from os.path import dirname as basename",
        {"b"},
        False,
    ),
    "a builtin shadowed by a library function": (
        "helpers.py",
        "import os\n",
        "import os\nfrom os.path import join as len\n",
        {"a"},
        False,
    ),
    "a new call": ("pipeline.py", "scale(2)", "scale(2) + helpers.unrelated()", {"a"}, True),
    "a helper renamed": ("helpers.py", "_slow", "_slower", {"b"}, False),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_an_edit_gives_a_walks_fingerprints(tmp_path: Path, name: str) -> None:
    file, old, new, expected, reshaped = EDITS[name]
    files = {"pipeline.py": PIPELINE, "helpers.py": HELPERS}
    write(tmp_path, files)
    before, _ = fingerprint(tmp_path)
    files[file] = edit(textwrap.dedent(files[file]), old, new)
    write(tmp_path, files)
    after, stats = fingerprint(tmp_path)
    assert changed(before, after) == expected
    assert stats.replayed
    assert stats.reshaped == reshaped
    assert stats.stages == len(expected)


def test_a_binding_chosen_at_import_time_is_seen_although_no_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same source, another value: ``pick`` is bound to another function."""
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    before, _ = fingerprint(tmp_path)
    monkeypatch.setenv("PIVOT_TEST_MODE", "fast")
    after, _ = fingerprint(tmp_path)
    assert changed(before, after) == {"b"}


#: Modules whose source stays put while what they bind depends on the environment:
#: ``probe`` reaches what ``PIVOT_TEST_MODE`` picks, ``steady`` nothing of it.
MOODY = {
    "a project function": (
        """
        def fast(x):
            return x

        def slow(x):
            return x + 0

        pick = fast if MODE == "fast" else slow

        def probe(x):
            return pick(x)

        def steady():
            return fast, slow
        """,
        True,  # probe now reaches another node: a new shape
    ),
    "a library function": (
        """
        from os.path import dirname, join

        path_of = join if MODE == "fast" else dirname

        def probe(x):
            return path_of(x)
        """,
        False,
    ),
    "a builtin shadowed": (
        """
        if MODE == "fast":
            from os.path import basename as len

        def probe(x):
            return len(x)
        """,
        False,
    ),
    "a library module": (
        """
        import json
        import pickle

        codec = json if MODE == "fast" else pickle

        def probe(x):
            return codec.dumps(x)
        """,
        False,
    ),
    "a function renamed": (
        """
        def helper(x):
            return x

        if MODE == "fast":
            helper.__qualname__ = "renamed"

        def probe(x):
            return helper(x)
        """,
        False,  # a new label, the same shape
    ),
    "one name defined twice": (
        """
        if MODE == "fast":
            def impl(x):
                return x
        else:
            def impl(x):
                return x + 0

        def probe(x):
            return impl(x)
        """,
        False,
    ),
    "a module's name given to a value that will not be compared": (
        """
        import json as codec

        class Touchy:
            def __eq__(self, other):
                raise ValueError("the truth value is ambiguous")

            __hash__ = object.__hash__

        if MODE == "fast":
            codec = Touchy()

        def probe(x):
            return codec.dumps(x)
        """,
        True,  # probe now reaches the class Touchy
    ),
}

MOODY_PIPELINE = """
    from pivot_supervise.pipeline._stage import stage
    import moody

    @stage(outs=["probe.txt"])
    def probe():
        return moody.probe(1)

    @stage(outs=["steady.txt"])
    def steady():
        return moody.steady()
"""


@pytest.mark.parametrize("case", sorted(MOODY))
def test_what_an_unchanged_file_binds_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    body, reshaped = MOODY[case]
    header = 'import os\nMODE = os.environ.get("PIVOT_TEST_MODE", "slow")\n'
    steady = "" if "def steady" in body else "\ndef steady():\n    return 1\n"
    moody = header + textwrap.dedent(body) + steady
    write(tmp_path, {"pipeline.py": MOODY_PIPELINE, "moody.py": moody})
    before, _ = fingerprint(tmp_path)
    monkeypatch.setenv("PIVOT_TEST_MODE", "fast")
    after, stats = fingerprint(tmp_path)
    assert changed(before, after) == {"probe"}
    assert stats.replayed
    assert stats.reshaped == reshaped


#: Values a module can give its functions and classes at import whose comparison,
#: hashing or formatting runs their own code: it may raise, lie, or show an address.
ODD_VALUES = """
    class Raising:
        def __eq__(self, other):
            raise ValueError("the truth value is ambiguous")

        __hash__ = object.__hash__

    class Agreeable:
        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    class Unhashable(type):
        def __hash__(cls):
            raise TypeError("unhashable class")

    class Shapeless(metaclass=Unhashable):
        pass

    class Text(str):
        def __eq__(self, other):
            raise ValueError("compared")

        def __hash__(self):
            raise ValueError("hashed")

        def __format__(self, spec):
            raise ValueError("formatted")
"""

#: name: (what the module does at import, the stages whose fingerprint that changes,
#: whether the last walk is still replayed)
ODD_SETTINGS = {
    "a function's module, an object that raises": (
        "helper.__module__ = Raising()",
        {"probe"},
        True,
    ),
    "a function's module, an object equal to anything": (
        "helper.__module__ = Agreeable()",
        {"probe"},
        True,
    ),
    "a function's module, an unhashable object": ("helper.__module__ = []", {"probe"}, True),
    "a function's module, the same text in a str subclass": (
        'helper.__module__ = Text("moody")',
        set(),
        True,
    ),
    "a function's qualified name, a str subclass": (
        'helper.__qualname__ = Text("h")',
        {"probe"},
        True,
    ),
    "a class's module, an object that raises": ("Helper.__module__ = Raising()", {"probe"}, True),
    "a class's module, the same text in a str subclass": (
        'Helper.__module__ = Text("moody")',
        set(),
        True,
    ),
    "a function's keyword defaults": ('helper.__kwdefaults__ = {"y": 1}', {"probe"}, True),
    "a function's __wrapped__, an unhashable value": ("helper.__wrapped__ = []", {"probe"}, True),
    # No longer a function: the node changed kind, so the graph is walked afresh.
    "a function's name bound to an object of an unhashable class": (
        "helper = Shapeless()",
        {"probe"},
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(ODD_SETTINGS))
def test_odd_values_set_at_import_are_checked_without_running_their_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Names are text to a walk, and a replay checks what it finds by identity: a value
    set at import is never compared, hashed or formatted, so a load neither fails nor
    lies, and fingerprints stay stable."""
    setting, expected, replayed = ODD_SETTINGS[case]
    moody = textwrap.dedent(ODD_VALUES) + textwrap.dedent(
        f"""
        import os

        def helper(x):
            return x

        class Helper:
            pass

        if os.environ.get("PIVOT_TEST_MODE") == "odd":
            {setting}

        def probe(x):
            return helper(x), Helper

        def steady():
            return 1
        """
    )
    write(tmp_path, {"pipeline.py": MOODY_PIPELINE, "moody.py": moody})
    before, _ = fingerprint(tmp_path)
    monkeypatch.setenv("PIVOT_TEST_MODE", "odd")
    after, stats = fingerprint(tmp_path)
    assert stats.replayed == replayed
    assert changed(before, after) == expected
    again, _ = fingerprint(tmp_path)
    assert again == after, "an odd value made fingerprints unstable"
    monkeypatch.delenv("PIVOT_TEST_MODE")
    assert fingerprint(tmp_path)[0] == before


#: Objects that answer for another one (an application's context, a lazy value) and
#: raise when asked while there is none, and a text that cannot be shown.
PROXIES = """
    class Proxy:
        @property
        def __class__(self):
            raise RuntimeError("working outside of the application context")

        def __getattr__(self, name):
            raise RuntimeError("working outside of the application context")

        def __repr__(self):
            raise RuntimeError("working outside of the application context")

    class Closed:
        __slots__ = ()

        def __getattr__(self, name):
            raise RuntimeError("closed")

    class Unshowable(str):
        def __repr__(self):
            raise RuntimeError("not shown")
"""


@pytest.mark.parametrize(
    "constant",
    ["Proxy()", "Closed()", 'Unshowable("x")', '[Proxy(), "a", 1]', '{"key": Closed()}'],
)
def test_a_constant_that_raises_when_read_is_written_by_its_type(
    tmp_path: Path, constant: str
) -> None:
    """A constant is never asked what it is (``isinstance`` would ask a proxy for its
    ``__class__``), and what it answers when shown may be an error: the load goes on,
    and the fingerprints are stable, then follow a change of the constant's type."""
    moody = textwrap.dedent(PROXIES) + textwrap.dedent(
        f"""
        CURRENT = {constant}

        def probe(x):
            return CURRENT

        def steady():
            return 1
        """
    )
    write(tmp_path, {"pipeline.py": MOODY_PIPELINE, "moody.py": moody})
    first, _ = fingerprint(tmp_path)
    again, stats = fingerprint(tmp_path)
    assert stats.replayed
    assert again == first
    assert "moody:CURRENT" in first["probe"].parts
    write(tmp_path, {"moody.py": moody.replace(f"CURRENT = {constant}", "CURRENT = None")})
    after, _ = fingerprint(tmp_path)
    assert changed(first, after) == {"probe"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("THRESHOLD = 3", 'THRESHOLD = int(os.environ["V"])'),
        ("factor=2", 'factor=int(os.environ["V"])'),
    ],
    ids=["a constant", "a default argument"],
)
def test_a_value_computed_at_import_time_is_serialised_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    """Same source, another value: what the module computes is read at every load."""
    write(
        tmp_path, {"pipeline.py": PIPELINE, "helpers.py": edit(textwrap.dedent(HELPERS), old, new)}
    )
    monkeypatch.setenv("V", "3")
    before, _ = fingerprint(tmp_path)
    monkeypatch.setenv("V", "4")
    after, stats = fingerprint(tmp_path)
    assert stats.replayed
    assert changed(before, after) == {"a", "b"}


@pytest.mark.parametrize("calls", ["fixed() + computed()", "computed() + fixed()"])
def test_a_default_computed_at_import_is_not_taken_for_a_constant_that_reads_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, calls: str
) -> None:
    """Two functions of a module whose defaults read alike, a constant and a value
    computed at import: each is checked for itself, whichever the replay meets first."""
    defaults = """
        import os

        def fixed(x=3):
            return x

        def computed(x=int(os.environ["V"])):
            return x
    """
    pipeline = f"""
        from pivot_supervise.pipeline._stage import stage
        from defaults import computed, fixed

        @stage(outs=["a.txt"])
        def a():
            return {calls}

        @stage(outs=["b.txt"])
        def b():
            return fixed()
    """
    write(tmp_path, {"pipeline.py": pipeline, "defaults.py": defaults})
    monkeypatch.setenv("V", "3")
    before, _ = fingerprint(tmp_path)
    monkeypatch.setenv("V", "4")
    after, stats = fingerprint(tmp_path)
    assert stats.replayed
    assert changed(before, after) == {"a"}


def test_a_stage_added_or_removed_is_followed_through_the_graph(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    before, _ = fingerprint(tmp_path)
    extra = '\n@stage(outs=["d.txt"])\ndef d():\n    return scale(1)\n'
    write(tmp_path, {"pipeline.py": textwrap.dedent(PIPELINE) + extra})
    added, stats = fingerprint(tmp_path)
    assert (stats.replayed, stats.reshaped) == (True, True)
    assert set(added) == {*before, "d"}
    assert {name for name in before if added[name] != before[name]} == set()
    assert stats.stages == 1  # d alone: the others reach nothing that changed
    write(tmp_path, {"pipeline.py": PIPELINE})
    removed, stats = fingerprint(tmp_path)
    assert (stats.replayed, stats.reshaped) == (True, True)
    assert removed == before


def test_code_found_anew_at_every_load_is_walked_afresh_once_it_piles_up(
    tmp_path: Path,
) -> None:
    """A lambda in a default argument has no name to be found again by: each replay
    meets it as a new node and leaves the old one behind, until a walk afresh."""
    helpers = edit(textwrap.dedent(HELPERS), "factor=2", "factor=lambda: 2")
    helpers = edit(helpers, "return x * factor", "return x * factor()")
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": helpers})
    first, _ = fingerprint(tmp_path)
    replays = 0
    while True:
        again, stats = fingerprint(tmp_path)
        assert again == first
        if not stats.replayed:
            break
        assert stats.reshaped
        replays += 1
        assert replays < 100, "what no stage reaches any more was never dropped"
    assert replays > 0
    _, stats = fingerprint(tmp_path)
    assert stats.replayed, "the walk afresh was not recorded for a replay"


def test_code_no_stage_reaches_is_counted_when_calls_are_only_added(tmp_path: Path) -> None:
    """A replay that only added edges bounds what no stage reaches without walking the
    graph: the recorded count, and one per node added.  Calls added one at a time to a
    function no stage calls any more leave what they call unreached too, and the graph
    is walked afresh once those pile up, as when calls are removed."""
    pipeline = edit(
        textwrap.dedent(PIPELINE), "return helpers.unrelated()", "return helpers.orphan()"
    )
    helpers = textwrap.dedent(HELPERS) + "\ndef orphan():\n    return 0\n"
    write(tmp_path, {"pipeline.py": pipeline, "helpers.py": helpers})
    fingerprint(tmp_path)
    write(tmp_path, {"pipeline.py": PIPELINE})  # c calls unrelated: orphan is unreached
    _, stats = fingerprint(tmp_path)
    assert stats.replayed and stats.reshaped
    called: list[str] = []
    while True:
        called.append(f"extra{len(called)}")
        defined = "".join(f"\ndef {name}():\n    return 1\n" for name in called)
        body = " + ".join(f"{name}()" for name in called)
        orphan = f"\ndef orphan():\n    return {body}\n"
        write(tmp_path, {"helpers.py": textwrap.dedent(HELPERS) + defined + orphan})
        _, stats = fingerprint(tmp_path)
        if not stats.replayed:
            break
        assert stats.reshaped, "a call added is a new shape"
        assert len(called) < 100, "what no stage reaches was never dropped"
    # orphan and the functions it calls: 17 unreached nodes with the 16th call, one
    # over the floor of 16 (a quarter of the graph is fewer).
    assert len(called) == 16, "walked afresh, but not at the limit"


#: Fingerprints in a fresh interpreter with the cache of ``argv[2]``, replayed or walked.
CHILD = """
import json, sys
from pathlib import Path
from pivot_supervise.workers._fingerprint import (
    ReplayStats, fingerprint_stages, open_code_cache)
from pivot_supervise.workers._loader import load_pipeline
root, state = Path(sys.argv[1]), Path(sys.argv[2])
loaded = load_pipeline(root, "pipeline.py", "params.toml", fingerprints=False)
cache = open_code_cache(state)
stats = ReplayStats()
prints = fingerprint_stages(loaded.functions, root, cache=cache, stats=stats)
cache.save()
print(json.dumps({"codes": {name: fp.code for name, fp in prints.items()},
                  "parts": {name: dict(fp.parts) for name, fp in prints.items()},
                  "replayed": stats.replayed, "walked": stats.walked}))
"""


def test_a_fresh_process_replays_another_process_walk(tmp_path: Path) -> None:
    """What watch mode does: each generation's worker replays the previous one's walk."""
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    state = tmp_path / "children"
    walked = python_json(CHILD, str(tmp_path), str(state), env={"PYTHONHASHSEED": "1"})
    replayed = python_json(CHILD, str(tmp_path), str(state), env={"PYTHONHASHSEED": "2"})
    write(tmp_path, {"helpers.py": edit(textwrap.dedent(HELPERS), "factor=2", "factor=5")})
    edited = python_json(CHILD, str(tmp_path), str(state), env={"PYTHONHASHSEED": "3"})
    assert (walked["replayed"], replayed["replayed"], edited["replayed"]) == (False, True, True)
    # The edited file's other functions are kept by their code, across processes too:
    # only ``double`` is hashed on top of what every replay hashes (constants, classes).
    assert edited["walked"] == replayed["walked"] + 1
    assert replayed["codes"] == walked["codes"]
    assert replayed["parts"] == walked["parts"]
    assert {name for name in edited["codes"] if edited["codes"][name] != walked["codes"][name]} == {
        "a",
        "b",
    }
    # And a walk of the edited project agrees, part by part.
    fresh = python_json(CHILD, str(tmp_path), str(tmp_path / "empty"))
    assert not fresh["replayed"]
    assert (fresh["codes"], fresh["parts"]) == (edited["codes"], edited["parts"])


def test_a_replay_keeps_the_analyses_of_the_code_it_did_not_look_at(tmp_path: Path) -> None:
    """A replay looks no analysis up for the code it finds unchanged; the file it saves
    must still hold them, or the next walk would analyse everything again."""
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    fingerprint(tmp_path)
    write(tmp_path, {"helpers.py": edit(textwrap.dedent(HELPERS), "factor=2", "factor=5")})
    _, stats = fingerprint(tmp_path)  # replayed: helpers.py analysed again, saved
    assert stats.replayed
    loaded = load_pipeline(tmp_path, "pipeline.py", "params.toml", fingerprints=False)
    cache = open_code_cache(tmp_path / "state")
    fingerprint_stages(
        loaded.functions, tmp_path, modules=loaded.modules, cache=cache, replay=False
    )
    assert cache.misses == 0
    assert cache.hits > 0


def test_one_cache_object_replays_its_own_latest_walk(tmp_path: Path) -> None:
    """A process fingerprinting twice with one cache (no file in between) replays the
    second time what the first recorded."""
    write(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    loaded = load_pipeline(tmp_path, "pipeline.py", "params.toml", fingerprints=False)
    cache = open_code_cache(tmp_path / "state")
    first, second = ReplayStats(), ReplayStats()
    one = fingerprint_stages(loaded.functions, tmp_path, cache=cache, stats=first)
    two = fingerprint_stages(loaded.functions, tmp_path, cache=cache, stats=second)
    assert one == two
    assert (first.replayed, second.replayed) == (False, True)
    assert second.stages == 0


MANY = "".join(f"def h{i}(x):\n    return x + {i}\n\n" for i in range(10))
USES_MANY = """
    from pivot_supervise.pipeline._stage import stage
    import many

    @stage(outs=["all.txt"])
    def everything():
        return [many.h0, many.h1, many.h2, many.h3, many.h4,
                many.h5, many.h6, many.h7, many.h8, many.h9]

    @stage(outs=["one.txt"])
    def one():
        return many.h9(1)
"""


@pytest.mark.parametrize(
    ("edit_made", "hashed_again", "changed_stages"),
    [
        # One body edited: the other nine are kept as they were.
        (("return x + 3\n", "return x + 33\n"), 1, {"everything"}),
        # A line added above them all: every function moved, none changed.
        (("def h0(x):", "# a new first line\ndef h0(x):"), 0, set()),
        # A line added inside one: that one is hashed again, the others only moved.
        (("return x + 3\n", "y = 1\n    return x + 3\n"), 1, {"everything"}),
    ],
    ids=["a body edited", "every line moved", "a line added"],
)
def test_a_saved_file_keeps_the_functions_whose_code_did_not_change(
    tmp_path: Path, edit_made: tuple[str, str], hashed_again: int, changed_stages: set[str]
) -> None:
    write(tmp_path, {"pipeline.py": USES_MANY, "many.py": MANY})
    before, _ = fingerprint(tmp_path)
    write(tmp_path, {"many.py": edit(MANY, *edit_made)})
    after, stats = fingerprint(tmp_path)
    assert stats.replayed
    assert stats.walked == hashed_again
    assert changed(before, after) == changed_stages
    # And the next load replays the new file's recording without hashing anything.
    again, stats = fingerprint(tmp_path)
    assert again == after
    assert stats.walked == 0
