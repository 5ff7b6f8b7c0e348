"""Replaying the last fingerprinting: check what it looked at instead of hashing it again.

Fingerprinting a loaded pipeline walks every project function, class and constant its
stages reach (see :mod:`._fingerprint`).  In watch mode each generation is a fresh
process that walks the same graph again, usually after a save that touched one file:
nearly every node comes out exactly as before.  So the last walk is kept (a
:class:`Recording`, in the code-analysis cache file) and the next load *checks* it:

- each node is found again where the walk found it (a module's global, a class's
  attribute, a wrapper's ``__wrapped__``, a closure cell, a stage's function);
- a plain function (no closure, no keyword defaults, no ``__wrapped__``, no import in its
  body, defaults without project code, the names it was made with) is unchanged if its
  code is the very one at the same place in the compilation of the same source, it runs
  in the same module's globals, it still has the names it was made with, and its
  defaults read the same;
- every name the walk looked up in a module's globals is bound as before: to the object
  found again for the same node, to the same module, to no value, or to a library object
  of the same name.

What is found is compared by identity, or as plain text: a module can give a function
or a name any value at import, and comparing or hashing that runs its own code, which
may raise or lie.

A node that passes keeps its recorded digest and edges.  Every other node found again
(a changed function, a class, a constant, a closure...) is serialised and hashed as in a
full walk, and so is whatever new it references.  Only the stages that reach a node
whose label, digest or edges changed are fingerprinted again: restamped with the new
digests if they reach the nodes they reached, under the same labels; recorded anew
from what they reach now otherwise (after edges were only added, what a stage reached
and what the new edges lead to).  The result is the same as a full walk's, exactly:
the checks cover everything a node's text is made of, and anything they cannot cover
is hashed again.

A stage added, or whose function is another one now, is followed through the graph.
Nodes no stage reaches any more (a call or a stage removed, code no longer found) stay
in the recording until they are a quarter of it; then the graph is walked afresh.  So
is one whose project modules changed, or where two recorded nodes are one object now.

What this saves is the serialising and hashing of every unchanged node, and the ranking
and reachability over the whole graph; what it costs is a few lookups per node, done a
module at a time in C (``map``, ``attrgetter``, list comparisons).  The recorded nodes
become :class:`._graph.Node` objects only when read, and a worker waiting for its
generation prepares the lookups (:class:`Replay`), so that a load only checks.
"""

from __future__ import annotations

import collections
import functools
import itertools
import marshal
import operator
import sys
import types
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ._codecache import CodeAnalysisCache, follow
from ._graph import Columns, Graph, StageFingerprint
from ._recording import (
    ABSENT,
    Check,
    Locator,
    Recording,
    StageRecord,
    Token,
    code_content,
    library_text,
    name_text,
)

__all__ = ["Replay", "ReplayStats", "Unchanged", "replayed"]

_FUNCTION = types.FunctionType
_GLOBALS = operator.attrgetter("__globals__")
_CODE = operator.attrgetter("__code__")
_DEFAULTS = operator.attrgetter("__defaults__")
_MODULE = operator.attrgetter("__module__")
_QUALNAME = operator.attrgetter("__qualname__")
#: A plain function has no keyword defaults.  (No closure either, but that is its
#: code's: a function has a cell per free variable.)
_KWDEFAULTS = operator.attrgetter("__kwdefaults__")
#: ``None`` as often as asked.  What a check finds where it expects ``None`` (or a
#: function) is compared by identity: it could be anything, and comparing or hashing it
#: runs its own code, which may raise or lie.
_NONE = itertools.repeat(None)
#: Asked as ``getattr(func, "__wrapped__", None)``: ``vars(func)`` would give each
#: function a ``__dict__`` of its own.
_WRAPPED = itertools.repeat("__wrapped__")
_NAME = operator.attrgetter("__name__")
#: ``True`` as often as asked: marks a group's nodes in C (``deque(map(...), maxlen=0)``).
_TRUE = itertools.repeat(True)
#: The source of the nodes that are stage functions (see :meth:`Replay.locate`).
_STAGES = "\0stages"
#: Where a node found through another one is looked up by name (see :meth:`Replay.locate`).
_EMPTY: dict[str, Any] = {}
#: ``dict.get``, called with the dict: a lookup in any of several dicts, in C.
_GET = cast(
    "Callable[[dict[str, Any], str, object], object]",
    dict.get,  # pyright: ignore[reportUnknownMemberType]
)


@dataclass(slots=True)
class ReplayStats:
    """What one fingerprinting did: replayed the last walk or walked afresh, how many
    nodes it kept as recorded and how many it serialised, and how many stages it
    fingerprinted (for tests and benchmarks)."""

    replayed: bool = False
    #: Whether the replay found the graph's shape changed (edges, new nodes).
    reshaped: bool = False
    kept: int = 0
    walked: int = 0
    stages: int = 0
    #: Why the last walk could not be replayed, if it raised (then it was walked afresh).
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Unchanged:
    """What :meth:`Replay.unchanged` found."""

    #: By node: whether it keeps its recorded digest and edges.
    same: list[bool]
    #: The modules whose names are not all bound as recorded.
    failed: set[str]
    #: The new checks of the nodes kept from files saved since (their code moved).
    moved: dict[int, Check]
    #: The source digests whose code analyses the nodes kept still name.
    sources: set[str]


class Replay:
    """A recording prepared for checking: its lookups grouped a module at a time.

    Preparing costs a pass over the recording; a standby worker does it while it waits
    (with the cache read ahead), so that a load only checks.
    """

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        #: Per node, where to look it up (a module's name, :data:`_STAGES`, or ``None``
        #: for a node found through another one) and under what name.
        self._sources: list[str | None] = []
        self._keys: list[str] = []
        others: list[tuple[int, Locator]] = []
        for index, locator in enumerate(recording.locators):
            if locator is not None and locator[0] == "b":
                self._sources.append(locator[1])
                self._keys.append(locator[2])
            elif locator is not None and locator[0] == "s":
                self._sources.append(_STAGES)
                self._keys.append(locator[1])
            else:
                self._sources.append(None)
                self._keys.append("")
                if locator is not None:
                    others.append((index, locator))
        self._bound_in = sorted({s for s in self._sources if s is not None and s != _STAGES})
        self._others = others
        #: The nodes whose objects name them (all but constants, named by module and name).
        self.identified = [i for i, kind in enumerate(recording.kinds) if kind != "const"]
        self.consts = [
            ((locator[1], locator[2]), index)
            for index, (kind, locator) in enumerate(
                zip(recording.kinds, recording.locators, strict=True)
            )
            if kind == "const" and locator is not None
        ]
        groups: dict[tuple[str, str], tuple[list[int], list[Check]]] = {}
        # A module's functions in the order their code is in its file's compilation, which
        # is the order they were made in, near each other in memory.
        checked = [(i, check) for i, check in enumerate(recording.checks) if check is not None]
        checked.sort(key=lambda item: item[1][3])
        for index, check in checked:
            indices, checks = groups.setdefault((check[0], check[1]), ([], []))
            indices.append(index)
            checks.append(check)
        self._groups = [
            _Group(module, filename, indices, checks)
            for (module, filename), (indices, checks) in groups.items()
        ]
        self._lookups = [
            _Lookups(module, names, recording.users.get(module, ()), recording.locators)
            for module, names in recording.lookups.items()
        ]
        #: The stages that reach each node.
        self._stages_of: dict[int, list[str]] = {}
        for stage, record in recording.stages.items():
            for node in record[4]:
                self._stages_of.setdefault(node, []).append(stage)

    # ------------------------------------------------------------------ finding nodes

    def locate(self, functions: Mapping[str, object]) -> list[Any]:
        """Each recorded node's object in this process, or :data:`ABSENT` (whether it
        is still of its node's kind is checked by whoever uses it)."""
        namespaces: dict[str | None, dict[str, Any]] = {_STAGES: dict(functions)}
        for name in self._bound_in:
            module = sys.modules.get(name)
            if type(module) is types.ModuleType:
                namespaces[name] = vars(module)
        # A lookup per node, in C: in the namespace of its source (none: an empty one),
        # under its name.
        where = map(namespaces.get, self._sources, itertools.repeat(_EMPTY))
        objects: list[Any] = list(map(_GET, where, self._keys, itertools.repeat(ABSENT)))
        for index, locator in self._others:
            objects[index] = _follow(locator, objects)
        return objects

    # ------------------------------------------------------------------ checking nodes

    def unchanged(
        self,
        objects: list[Any],
        cache: CodeAnalysisCache,
        defaults_text: Callable[[object], str | None],
        modules: Mapping[str, object],
    ) -> Unchanged:
        """Which nodes keep their recorded digest and edges (see the module doc).

        ``cache`` names code (its compilations); ``defaults_text`` renders a defaults
        tuple as a walk does, ``None`` if it reaches project code; ``modules`` are the
        project's.
        """
        same = [False] * len(objects)
        checker = _Checker(cache, defaults_text)
        for group in self._groups:
            group.check(objects, same, checker)
        failed: set[str] = set()
        for lookups in self._lookups:
            if not lookups.hold(objects, modules):
                failed.add(lookups.module)
                for user in lookups.users:
                    same[user] = False
        moved = {index: check for index, check in checker.moved.items() if same[index]}
        return Unchanged(same, failed, moved, checker.sources)

    def affected(self, changed: Iterable[int]) -> list[str]:
        """The stages that reach any of the ``changed`` nodes."""
        found = map(self._stages_of.get, changed, itertools.repeat(()))
        return list(set(itertools.chain.from_iterable(found)))


class _Group:
    """The plain functions of one module's globals whose code is in one file."""

    __slots__ = (
        "checks",
        "contents",
        "default_slots",
        "default_texts",
        "defaults",
        "filename",
        "indices",
        "module",
        "paths",
        "qualnames",
        "showing",
        "source",
        "top_level",
        "top_max",
    )

    def __init__(self, module: str, filename: str, indices: list[int], checks: list[Check]) -> None:
        self.module = module
        self.filename = filename
        self.indices = indices
        self.source = {check[2] for check in checks}
        self.paths = [check[3] for check in checks]
        #: Where each function's code is in the module code's constants, if every one
        #: is defined at module level (the common case, checked in one pass).
        self.top_level = (
            [path[0] for path in self.paths] if all(len(p) == 1 for p in self.paths) else None
        )
        self.top_max = max(self.top_level, default=-1) if self.top_level is not None else -1
        self.defaults = [check[6] for check in checks]
        # The distinct texts of defaults, the first function showing each, and which
        # one each function has: the fast check renders one tuple per text, and asks
        # of every other function the very same tuple (a module's functions share the
        # constant tuple of their defaults, and ``None``).
        first: dict[str | None, int] = {}
        for member, text in enumerate(self.defaults):
            first.setdefault(text, member)
        self.default_texts = list(first)
        self.showing = list(first.values())
        slot = {text: number for number, text in enumerate(first)}
        self.default_slots = [slot[text] for text in self.defaults]
        self.contents = [check[7] for check in checks]
        #: Interned, like the names in code: a function's ``__qualname__`` is its code's
        #: ``co_qualname`` unless set since, so the very same object when unchanged.
        self.qualnames = [sys.intern(check[4]) for check in checks]
        self.checks = checks

    def check(self, objects: list[Any], same: list[bool], checker: _Checker) -> None:
        """Mark the group's functions that are unchanged in ``same``."""
        module = sys.modules.get(self.module)
        if type(module) is not types.ModuleType or len(self.source) != 1:
            return
        namespace = vars(module)
        funcs = list(map(objects.__getitem__, self.indices))
        if not all(map(operator.is_, map(type, funcs), itertools.repeat(_FUNCTION))):
            # Some not found again: check the others one by one.
            kept = [i for i, func in enumerate(funcs) if type(func) is _FUNCTION]
            self._check_some(kept, funcs, namespace, same, checker)
            return
        compiled = checker.compiled(self.filename)
        codes = self._codes_in(compiled[1]) if compiled is not None else None
        name = namespace.get("__name__")
        if (
            compiled is not None
            and compiled[0] in self.source
            and codes is not None
            and all(map(operator.is_, map(_CODE, funcs), codes))
            and all(map(operator.is_, map(_GLOBALS, funcs), itertools.repeat(namespace)))
            and type(name) is str
            and name == self.module
            and all(map(operator.is_, map(_MODULE, funcs), itertools.repeat(name)))
            and all(map(operator.is_, map(_QUALNAME, funcs), self.qualnames))
            and all(map(operator.is_, map(getattr, funcs, _WRAPPED, _NONE), _NONE))
            and all(map(operator.is_, map(_KWDEFAULTS, funcs), _NONE))
            and self._same_defaults(list(map(_DEFAULTS, funcs)), checker)
        ):
            collections.deque(map(same.__setitem__, self.indices, _TRUE), maxlen=0)
            checker.sources.update(self.source)
            return
        self._check_some(list(range(len(funcs))), funcs, namespace, same, checker)

    def _codes_in(self, module_code: types.CodeType) -> list[object] | None:
        """The code at each function's recorded place in the tree of ``module_code``
        (``None`` where there is none), or ``None`` if a place is past its constants:
        the very code each function must run."""
        if self.top_level is not None:
            consts = module_code.co_consts
            if self.top_max >= len(consts):
                return None
            return list(map(consts.__getitem__, self.top_level))
        return [follow(module_code, path) for path in self.paths]

    def _same_defaults(self, defaults: list[object], checker: _Checker) -> bool:
        """Whether each function's defaults read as recorded: the first function of
        each recorded text has defaults of that text, and every other one the very
        same tuple as the first of its text."""
        shown = list(map(defaults.__getitem__, self.showing))
        if list(map(checker.defaults, shown)) != self.default_texts:
            return False
        expected = map(shown.__getitem__, self.default_slots)
        return all(map(operator.is_, defaults, expected))

    def _check_some(
        self,
        members: list[int],
        funcs: list[Any],
        namespace: dict[str, Any],
        same: list[bool],
        checker: _Checker,
    ) -> None:
        """The group's check, one function at a time (after the whole group failed it).

        In a file saved since, a function is the same if its code is equal to the
        recorded one (:func:`._recording.code_content`), not the very same object; its
        check then names the code's new place (see :attr:`_Checker.moved`).
        """
        compiled = checker.compiled(self.filename)
        name = namespace.get("__name__")
        if compiled is None or type(name) is not str or name != self.module:
            return
        digest, module_code = compiled
        saved = digest not in self.source
        for member in members:
            func = funcs[member]
            code = func.__code__
            path = self.paths[member]
            key = None
            if saved:
                content = self.contents[member]
                if content is None or code_content(code) != content:
                    continue
                old = self.checks[member]
                moved_to = checker.code_path(code)
                key = checker.carry((old[2], old[8]), code)
                if moved_to is None or key is None:
                    continue
                path = moved_to
            elif follow(module_code, path) is not code:
                continue
            if (
                func.__globals__ is namespace
                and func.__module__ is name
                and func.__qualname__ is code.co_qualname
                and getattr(func, "__wrapped__", None) is None
                and func.__kwdefaults__ is None
                and checker.defaults(func.__defaults__) == self.defaults[member]
            ):
                index = self.indices[member]
                same[index] = True
                if key is not None:
                    old = self.checks[member]
                    checker.moved[index] = (*old[:2], key[0], path, *old[4:8], key[1])
                else:
                    checker.sources.add(digest)


class _Checker:
    """What checking functions needs from the walk: the code cache's compilations, and
    the rendering of defaults (once per tuple: a module's functions share them)."""

    __slots__ = (
        "_by_value",
        "_render",
        "_texts",
        "carry",
        "code_path",
        "compiled",
        "moved",
        "sources",
    )

    def __init__(self, cache: CodeAnalysisCache, render: Callable[[object], str | None]) -> None:
        self.compiled = cache.compiled
        self.code_path = cache.code_path
        self.carry = cache.carry
        self._render = render
        #: The new checks of the functions kept from files saved since, by node.
        self.moved: dict[int, Check] = {}
        #: The sources of the functions kept where they were.
        self.sources: set[str] = set()
        #: Renderings by the ``id`` of the tuple (kept alive by its functions)...
        self._texts: dict[int, str | None] = {}
        #: ...and by its ``marshal`` bytes: equal bytes are values of the same builtin
        #: types, equal, so they render alike (``(0,)`` in every module, rendered once).
        self._by_value: dict[bytes, str | None] = {}

    def defaults(self, defaults: object) -> str | None:
        if defaults is None:
            return None
        key = id(defaults)
        texts = self._texts
        if key not in texts:
            texts[key] = self._text(defaults)
        return texts[key]

    def _text(self, value: object) -> str | None:
        try:
            key = marshal.dumps(value)  # pyright: ignore[reportArgumentType]
        except ValueError:  # not plain data (a function, an object): rendered each time
            return self._render(value)
        by_value = self._by_value
        if key not in by_value:
            by_value[key] = self._render(value)
        return by_value[key]


class _Lookups:
    """The names the walk looked up in one module, and what each was bound to."""

    __slots__ = (
        "checkable",
        "found",
        "module",
        "module_names",
        "modules",
        "node_names",
        "nodes",
        "text_names",
        "texts",
        "unbound",
        "users",
    )

    def __init__(
        self,
        module: str,
        tokens: Mapping[str, Token],
        users: Iterable[int],
        locators: Sequence[Locator | None],
    ) -> None:
        self.module = module
        self.users = tuple(users)
        self.checkable = True
        self.node_names: list[str] = []
        self.nodes: list[int] = []
        self.unbound: list[str] = []
        self.module_names: list[str] = []
        self.modules: list[str] = []
        self.text_names: list[str] = []
        self.texts: list[str] = []
        #: Every node a name is bound to, those found by that very name included: a
        #: node found there is bound to it by construction, if it was found at all.
        self.found: list[int] = []
        for name, token in tokens.items():
            if type(token) is int and token >= 0:
                self.found.append(token)
                if locators[token] != ("b", module, name):
                    self.node_names.append(name)
                    self.nodes.append(token)
            elif token == -1:
                self.unbound.append(name)
            elif type(token) is str:
                self.module_names.append(name)
                self.modules.append(token)
            elif type(token) is tuple:
                self.text_names.append(name)
                self.texts.append(token[1])
            else:
                self.checkable = False

    def hold(self, objects: list[Any], modules: Mapping[str, object]) -> bool:
        """Whether every name is bound as recorded."""
        module = sys.modules.get(self.module)
        if not self.checkable or type(module) is not types.ModuleType:
            return False
        namespace = vars(module)
        if any(map(operator.is_, map(objects.__getitem__, self.found), itertools.repeat(ABSENT))):
            return False  # a node not found again cannot stand for an unbound name
        expected = list(map(objects.__getitem__, self.nodes))
        found = map(namespace.get, self.node_names, itertools.repeat(ABSENT))
        if not all(map(operator.is_, found, expected)):
            return False
        if not namespace.keys().isdisjoint(self.unbound):
            return False
        if self.modules:
            # The very modules (by identity: a value bound instead could compare equal
            # to anything, or raise), under the same names.
            bound = list(map(namespace.get, self.module_names, itertools.repeat(ABSENT)))
            if not all(map(operator.is_, bound, map(sys.modules.get, self.modules))):
                return False
            if list(map(name_text, map(_NAME, bound))) != self.modules:
                return False
        return all(
            library_text(namespace.get(name, ABSENT), modules) == text
            for name, text in zip(self.text_names, self.texts, strict=True)
        )


def _follow(locator: Locator, objects: list[Any]) -> Any:
    """The object ``locator`` (through another node) points at now, or :data:`ABSENT`."""
    kind = locator[0]
    parent = objects[locator[1]]
    if parent is ABSENT:
        return ABSENT
    if kind == "a":
        if not issubclass(type(parent), type):
            return ABSENT
        return cast("type", parent).__dict__.get(locator[2], ABSENT)
    if kind == "w":
        return vars(parent).get("__wrapped__", ABSENT) if type(parent) is _FUNCTION else ABSENT
    if kind == "c" and type(parent) is _FUNCTION:
        closure: tuple[types.CellType, ...] | None = parent.__closure__
        number: int = locator[2]
        if closure is not None and number < len(closure):
            try:
                cell: types.CellType = closure[number]
                return cast("object", cell.cell_contents)
            except ValueError:
                return ABSENT
    return ABSENT


def replayed(
    replay: Replay,
    functions: Mapping[str, Callable[..., Any]],
    modules: Mapping[str, Path],
    cache: CodeAnalysisCache,
    stats: ReplayStats,
) -> tuple[dict[str, StageFingerprint], Recording | None] | None:
    """The fingerprints from checking ``replay``'s walk, and the recording to keep
    instead of it (``None``: it is still right); ``None`` when the graph must be walked
    afresh."""
    recording = replay.recording
    if recording.modules != tuple(sorted(modules)):
        return None  # what is project code and what is not may differ
    objects = replay.locate(functions)
    scratch = Graph(modules)
    found = replay.unchanged(objects, cache, scratch.plain_text, modules)
    same = found.same
    graph = Graph(modules, cache)
    rebuilt = graph.seed(
        recording, objects, same, identified=replay.identified, consts=replay.consts
    )
    if rebuilt is None:
        return None  # two nodes are one object now
    roots = _roots(recording, objects, graph, functions)
    # Stages added, or whose function is another one now: followed through the graph.
    rooted = [
        stage
        for stage, index in roots.items()
        if stage not in recording.stages or recording.stages[stage][0] != index
    ]
    graph.build()
    nodes = graph.nodes
    # A node relabelled is named in the text of every node that references it.
    relabelled = {i for i in rebuilt if nodes[i].label != recording.labels[i]}
    if relabelled:
        naming = [
            i
            for i, kept in enumerate(same)
            if kept and not relabelled.isdisjoint(recording.edges[i])
        ]
        graph.rebuild(naming)
        graph.build()
        rebuilt.extend(naming)
    count = len(recording.labels)
    changed = [i for i in rebuilt if (nodes[i].label, nodes[i].digest) != recording.pair(i)]
    reshaped = [i for i in rebuilt if tuple(nodes[i].edges) != recording.edges[i]]
    new_shape = (
        bool(reshaped or rooted) or len(nodes) > count or len(roots) != len(recording.stages)
    )
    columns = graph.columns() if new_shape else None
    gained = _gained(recording, columns, reshaped) if columns is not None else None
    dead = recording.dead
    if columns is not None:
        dead = _dead(graph, columns, recording, roots, gained)
        if dead > _garbage_limit(len(nodes)):
            return None  # walked afresh, which leaves only what is reached
        # A node with new edges usually has a new digest too, but not always: two
        # nodes of one label (two lambdas of a module) read the same in its text.
        changed.extend(reshaped)
        changed.extend(range(count, len(nodes)))
    for digest in found.sources:
        cache.keep(digest)
    affected = {stage for stage in replay.affected(changed) if stage in roots}
    affected.update(rooted)
    stats.replayed, stats.reshaped = True, new_shape
    stats.kept, stats.walked, stats.stages = sum(same), len(rebuilt), len(affected)
    stages = {stage: recording.stages[stage] for stage in roots if stage not in rooted}
    shape = (columns, gained) if columns is not None else None
    _fingerprint_again(
        graph,
        stages,
        affected,
        roots,
        changed=set(changed),
        shape=shape,
        relabelled=bool(relabelled),
    )
    fingerprints = map(_fingerprint, map(_PARTS, map(stages.__getitem__, functions)))
    result = dict(zip(functions, fingerprints, strict=True))
    return result, graph.update(recording, rebuilt, found.failed, stages, found.moved, dead=dead)


def _fingerprint_again(
    graph: Graph,
    stages: dict[str, StageRecord],
    affected: Iterable[str],
    roots: Mapping[str, int],
    *,
    changed: set[int],
    shape: tuple[Columns, Mapping[int, tuple[int, ...]] | None] | None,
    relabelled: bool,
) -> None:
    """Fingerprint the ``affected`` stages again, into ``stages`` (the recorded
    records, but for the stages rooted anew).

    A stage that reaches the nodes it reached, under the labels they had, is
    restamped with the new digests of the ``changed`` ones.  Otherwise it is recorded
    again from what it reaches now (``shape``: the graph's columns, and the edges
    gained by recorded nodes if none lost any; see :func:`_reach_now`).
    """
    columns = shape[0] if shape is not None else None
    for stage in affected:
        old = stages.get(stage)  # None: rooted anew (in a new shape)
        reach: Collection[int] = old[4] if old is not None else ()
        same_nodes = old is not None
        if shape is not None:
            columns = columns or graph.columns()
            reach = _reach_now(graph, columns, roots[stage], old, shape[1])
            same_nodes = old is not None and reach == set(old[4])
        record = None
        if old is not None and same_nodes and not relabelled:
            record = graph.restamp(old, changed.intersection(old[4]))
        if record is None:
            columns = columns or graph.columns()
            record = graph.stage_record(columns, roots[stage], reach)
        stages[stage] = record


def _gained(
    recording: Recording, columns: Columns, reshaped: list[int]
) -> dict[int, tuple[int, ...]] | None:
    """The edges each recorded node of a new shape gained; ``None`` if one lost any
    (then a stage may reach less than it did)."""
    edges = columns[2]
    gained: dict[int, tuple[int, ...]] = {}
    for index in reshaped:
        old, new = set(recording.edges[index]), set(edges[index])
        if not old <= new:
            return None
        gained[index] = tuple(new - old)
    return gained


def _dead(
    graph: Graph,
    columns: Columns,
    recording: Recording,
    roots: Mapping[str, int],
    gained: Mapping[int, tuple[int, ...]] | None,
) -> int:
    """How many nodes no stage reaches after a change of shape, or a bound of it
    (:attr:`Recording.dead`).  With edges only ``gained`` and every recorded stage
    rooted where it was, no node reached stops being reached, so the recorded count
    and one per node added bound it: the graph is walked only if that bound is over
    the limit."""
    count = len(columns[0])
    stages = recording.stages
    if gained is not None and all(roots.get(s) == record[0] for s, record in stages.items()):
        bound = recording.dead + count - len(recording.labels)
        if bound <= _garbage_limit(count):
            return bound
    return count - len(graph.reachable(columns, roots.values()))


def _garbage_limit(count: int) -> int:
    """How many of ``count`` nodes a replayed graph may keep that no stage reaches any
    more (those of removed calls, of code no longer found) before it is walked afresh."""
    return max(_GARBAGE_FLOOR, count // 4)


def _reach_now(
    graph: Graph,
    columns: Columns,
    root: int,
    record: StageRecord | None,
    gained: Mapping[int, tuple[int, ...]] | None,
) -> set[int]:
    """What a stage reaches after a change of shape: walked from its ``root``, unless
    edges were only ``gained`` and it has a ``record``: then what it reached, and what
    the edges its nodes gained lead to."""
    if record is None or gained is None:
        return graph.reachable(columns, [root])
    reached = record[4]
    targets = itertools.chain.from_iterable(map(gained.get, reached, itertools.repeat(())))
    return graph.reachable(columns, targets, reached)


def _roots(
    recording: Recording,
    objects: list[Any],
    graph: Graph,
    functions: Mapping[str, Callable[..., Any]],
) -> dict[str, int]:
    """Each stage's node: its recorded one if that is its function still, else the
    node of its function (a new one if it has none)."""
    roots: dict[str, int] = {}
    recorded = recording.stages
    for stage, func in functions.items():
        record = recorded.get(stage)
        if record is not None and objects[record[0]] is func:
            roots[stage] = record[0]
            continue
        index = graph.by_id(func)
        roots[stage] = index if index is not None else graph.root(stage, func)
    return roots


#: A stage's fingerprint from its record, made in C (``StageFingerprint._make`` is a
#: Python call per stage, and a replay makes one per stage).
_fingerprint = cast(
    "Callable[[tuple[str, tuple[str, ...], dict[str, str]]], StageFingerprint]",
    functools.partial(tuple.__new__, StageFingerprint),  # pyright: ignore[reportUnknownMemberType]
)
_PARTS = operator.itemgetter(1, 2, 3)

#: How many nodes a replayed graph may keep that no stage reaches, at the least (see
#: :func:`_garbage_limit`).
_GARBAGE_FLOOR = 16
