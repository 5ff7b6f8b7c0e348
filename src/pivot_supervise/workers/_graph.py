"""The walk behind code fingerprints: project objects as a graph, each hashed once.

:class:`Graph` walks from the stage functions (see :mod:`._fingerprint` for what counts)
and gives each stage its :class:`StageFingerprint`.  It also writes itself down for the
next load to replay (:meth:`Graph.recording`), and is what a replay seeds with the
recorded nodes and completes (:meth:`Graph.seed`, :meth:`Graph.update`; see
:mod:`._replay`).

Cost: each function, class and constant is hashed ONCE (its *own* digest, with the
names of what it references folded in); a stage's digest is then the hash of the sorted
``(name, own digest)`` pairs of everything it reaches.  Reachable sets are computed per
strongly connected component (mutual recursion, methods that reference their class), as
bitsets over the ranked pairs, so 200 stages sharing 1,200 helpers cost one pass over
the graph, not 200.  Each binding a module's functions look up is serialised once per
run, not once per reference.  The analysis of each code object (bytecode digest, names
loaded) can be kept across processes in a :class:`~._codecache.CodeAnalysisCache` (see
:func:`._fingerprint.open_code_cache`): a new generation then analyses only the code of
the files that changed since the last load.
"""

from __future__ import annotations

import dataclasses
import dis
import enum
import functools
import hashlib
import importlib.util
import itertools
import operator
import re
import sys
import types
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

from ._codecache import Analysis, CacheKey, CodeAnalysisCache
from ._imports import is_project_file
from ._recording import (
    ABSENT,
    Check,
    Locator,
    Recording,
    StageRecord,
    Token,
    code_content,
    is_kind,
    library_name,
    library_text,
    name_text,
    qualified_name,
)

__all__ = ["Columns", "Graph", "Node", "StageFingerprint"]


class StageFingerprint(NamedTuple):
    """The code fingerprint of one stage, as plain data.

    ``code`` is a hex digest.  ``parts`` maps the name of every project function, class
    and module constant the stage reaches (``"module:qualname"``; constants are
    ``"module:NAME"``) to its own digest, so that ``explain`` can name what changed;
    ``functions`` is the sorted tuple of those names.  A named tuple: a replay makes
    one per stage, and a tuple is made in a third of a frozen dataclass's time.
    """

    code: str
    functions: tuple[str, ...] = ()
    parts: Mapping[str, str] = types.MappingProxyType({})


_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]
_IMPORT_NAME = dis.opmap["IMPORT_NAME"]
_HASCONST = frozenset(dis.hasconst)
#: Python 3.14 marks a docstring with a flag instead of a constant slot.
_CO_HAS_DOCSTRING = 0x4000000
#: A repr that shows an address (``<Foo object at 0x7f...>``) differs in every process.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
#: Class attributes that describe where a class was written, not what it does.
_CLASS_NOISE = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__doc__",
        "__module__",
        "__qualname__",
        "__firstlineno__",
        "__static_attributes__",
        "_abc_impl",
    }
)
_MISSING = object()
_SCALARS = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
#: The scalar types themselves, whose ``repr`` runs no code of the project's.
_PLAIN_SCALARS = frozenset(_SCALARS)


def _all_scalars(items: Iterable[object]) -> bool:
    """Whether every item is one :meth:`Graph._value` writes as its plain ``repr``
    (checked in C: the items of a constant are mostly strings and numbers)."""
    return _PLAIN_SCALARS.issuperset(map(type, items))


def _scalar_repr(value: object, kind: type[Any]) -> str:
    """The ``repr`` of a scalar of a subclass (an ``IntEnum`` member, say), which runs
    its own code and may raise."""
    try:
        return name_text(repr(value)) or ""
    except Exception:
        return f"<{qualified_name(kind)} unreadable>"


def _object_repr(value: object) -> str:
    """The ``repr`` of an object of no known shape, or ``""`` if it raises or shows an
    address (which differs in every process)."""
    try:
        shown = name_text(repr(value)) or ""
    except Exception:
        return ""
    return "" if _ADDRESS.search(shown) else shown


def _blake(text: str) -> str:
    return _blake_bytes(text.encode("utf-8", "surrogatepass"))


def _blake_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class Node:
    """One project object: its label, its own digest, and the nodes it references."""

    __slots__ = ("digest", "edges", "kind", "label", "obj")

    def __init__(
        self, label: str, kind: str, obj: object, digest: str = "", edges: Sequence[int] = ()
    ) -> None:
        self.label = label
        self.kind = kind
        self.obj = obj
        self.digest = digest
        self.edges = edges


#: Every node's label, digest and edges, by index (see :meth:`_Nodes.columns`).
Columns = tuple[list[str], list[str], list[Sequence[int]]]


class _Nodes(Protocol):
    """A graph's nodes by index: :class:`_Walked` for a walk, :class:`_Recorded` for a
    replay."""

    def __getitem__(self, index: int, /) -> Node: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Node]: ...
    def append(self, node: Node, /) -> None: ...
    def columns(self) -> Columns:
        """Every node's label, digest and edges, as lists (for work over many nodes,
        which then needs no :class:`Node` of its own)."""
        ...


class _Walked(list[Node]):
    """The nodes of a walk: all made as it goes."""

    def columns(self) -> Columns:
        return (
            [node.label for node in self],
            [node.digest for node in self],
            [node.edges for node in self],
        )


class _Recorded:
    """A recording's nodes, found again as ``objects``, made into :class:`Node` objects
    only when read: a replay reads the few it serialises again and the ones they
    reference, not the thousand it keeps.  Nodes appended come after them."""

    __slots__ = ("_columns", "_count", "_made")

    def __init__(self, recording: Recording, objects: list[Any]) -> None:
        self._columns = (
            recording.labels,
            recording.kinds,
            objects,
            recording.digests,
            recording.edges,
        )
        self._count = len(recording.labels)
        self._made: dict[int, Node] = {}

    def __getitem__(self, index: int) -> Node:
        try:
            return self._made[index]
        except KeyError:
            if not 0 <= index < self._count:
                raise IndexError(index) from None
            labels, kinds, objects, digests, edges = self._columns
            node = Node(labels[index], kinds[index], objects[index], digests[index], edges[index])
            self._made[index] = node
            return node

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Node]:
        return map(self.__getitem__, range(self._count))

    def append(self, node: Node) -> None:
        self._made[self._count] = node
        self._count += 1

    def columns(self) -> Columns:
        labels, _, _, digests, edges = self._columns
        added = [""] * (self._count - len(labels))
        labels, digests = [*labels, *added], [*digests, *added]
        edge_lists: list[Sequence[int]] = [*edges, *([()] * len(added))]
        for index, node in self._made.items():
            labels[index], digests[index], edge_lists[index] = node.label, node.digest, node.edges
        return labels, digests, edge_lists


class _Namespace:
    """A module's globals as a walk looks names up in them (see ``Graph._bindings``)."""

    __slots__ = ("attributes", "bound", "findable", "name", "namespace", "unbound", "users")

    def __init__(self, namespace: Mapping[str, Any]) -> None:
        self.namespace = namespace
        self.name: str = name_text(namespace.get("__name__")) or "?"
        module = sys.modules.get(self.name)
        #: Whether these are the globals of the module of that name, where a replay
        #: looks the names up again.
        self.findable = issubclass(type(module), types.ModuleType) and vars(module) is namespace
        self.bound: dict[str, _Bound] = {}
        self.attributes: dict[str, _Bound] = {}
        self.unbound: set[str] = set()
        #: The nodes that looked names up here.
        self.users: set[int] = set()


def _function_label(func: types.FunctionType) -> str:
    module = name_text(func.__globals__.get("__name__")) or "?"
    qualname = func.__code__.co_qualname
    label = f"{module}:{qualname}"
    claimed_module, claimed_qualname = name_text(func.__module__), name_text(func.__qualname__)
    if claimed_qualname != qualname or claimed_module != module:
        # A ``functools.wraps`` wrapper claims the wrapped function's names; keep its
        # own code name and show whom it wraps.
        label = f"{label}[{claimed_module}:{claimed_qualname}]"
    return label


def _class_label(cls: type) -> str:
    return f"{name_text(cls.__module__)}:{name_text(cls.__qualname__)}"


#: The analysis of a code object, as plain data (what the cache keeps): its digest, and
#: the names loaded as globals, as attributes (or by ``from m import name``) and as
#: modules (``IMPORT_NAME``) by it and the code nested in it, each sorted.
_CodeInfo = Analysis
#: A name's binding as a node's text records it: the value (to check that a recorded
#: binding is still the one looked up), the text, the edges it adds, and the project
#: module it is, if it is one (its attributes are looked up too).
_Bound = tuple[object, str, tuple[int, ...], types.ModuleType | None]


class _Columns:
    """A recording's per-node columns as a replay changes them (copied on first write)."""

    def __init__(self, recording: Recording) -> None:
        self._recording = recording
        self.labels, self.kinds = recording.labels, recording.kinds
        self.digests, self.edges = recording.digests, recording.edges
        self.locators, self.checks = recording.locators, recording.checks
        self.changed = False

    def _own(self) -> None:
        if not self.changed:
            self.changed = True
            self.labels, self.kinds = list(self.labels), list(self.kinds)
            self.digests, self.edges = list(self.digests), list(self.edges)
            self.locators, self.checks = list(self.locators), list(self.checks)

    def set(self, index: int, node: Node, check: Check | None) -> None:
        edges = tuple(node.edges)
        if (node.label, node.digest, edges, check) != (
            self.labels[index],
            self.digests[index],
            self.edges[index],
            self.checks[index],
        ):
            self._own()
            self.labels[index], self.digests[index] = node.label, node.digest
            self.edges[index], self.checks[index] = edges, check

    def set_check(self, index: int, check: Check) -> None:
        """A kept node's new check (its code moved; its label, digest and edges stay)."""
        if check != self.checks[index]:
            self._own()
            self.checks[index] = check

    def add(self, node: Node, locator: Locator | None, check: Check | None) -> None:
        self._own()
        self.labels.append(node.label)
        self.kinds.append(node.kind)
        self.digests.append(node.digest)
        self.edges.append(tuple(node.edges))
        self.locators.append(locator)
        self.checks.append(check)

    def recording(
        self,
        lookups: dict[str, dict[str, Token]],
        users: dict[str, list[int]],
        stages: dict[str, StageRecord],
        dead: int,
    ) -> Recording:
        return dataclasses.replace(
            self._recording,
            dead=dead,
            labels=self.labels,
            kinds=self.kinds,
            digests=self.digests,
            edges=self.edges,
            locators=self.locators,
            checks=self.checks,
            lookups=lookups,
            users=users,
            stages=stages,
        )


class Graph:
    """Project objects as nodes; an edge means "references"."""

    def __init__(self, modules: Mapping[str, Path], cache: CodeAnalysisCache | None = None) -> None:
        self._modules = modules
        self._cache = cache
        self.nodes: _Nodes = _Walked()
        self._by_id: dict[int, int] = {}
        self._consts: dict[tuple[str, str], int] = {}
        self._codes: dict[int, _CodeInfo] = {}
        #: The cache's name of each code object analysed on its own (``None``: it has none).
        self._keys: dict[int, CacheKey | None] = {}
        self._spec_cache: dict[str, str] = {}
        #: By namespace (``id``, checked against the namespace itself): its module's
        #: name, how each name looked up in it is bound (as a global or as a module
        #: attribute) and which names were looked up but not bound.  Functions of one
        #: module share most of their references, so each binding is serialised once,
        #: not once per reference.
        self._bindings: dict[int, _Namespace] = {}
        #: Where each node was found, for a replay (see :mod:`._replay`).
        self.locators: dict[int, Locator] = {}
        #: The node :meth:`build` is serialising.
        self._building = -1
        #: Values serialised by :meth:`_shared_value`, by ``id`` (and the value itself).
        self._shared: dict[int, tuple[object, str, tuple[int, ...]]] = {}
        self._pending: list[int] = []
        #: Everything keyed by ``id`` stays referenced until we are done, so that no ``id``
        #: is reused: nodes hold their objects, records hold their values, and this holds
        #: the code objects analysed.
        self._alive: list[object] = []

    # ------------------------------------------------------------------ node creation

    def root(self, stage: str, func: object) -> int:
        if type(func) is types.FunctionType:
            index = self._function_node(func)
        else:
            index = self._node(f"<stage>:{stage}", "value", func)
        self.locators.setdefault(index, ("s", stage))
        return index

    def _node(self, label: str, kind: str, obj: object) -> int:
        """A new node for ``obj`` (which it keeps referenced, so its ``id`` stays its own)."""
        index = len(self.nodes)
        self.nodes.append(Node(label, kind, obj))
        self._by_id[id(obj)] = index
        self._pending.append(index)
        return index

    def _is_project_module(self, name: object) -> bool:
        """Whether ``name`` (a ``__module__`` or a module's ``__name__``, as found on an
        object) names a project module."""
        return (name if type(name) is str else name_text(name)) in self._modules

    def _function_node(self, func: types.FunctionType) -> int:
        index = self._by_id.get(id(func))
        if index is not None:
            return index
        return self._node(_function_label(func), "function", func)

    def _class_node(self, cls: type) -> int:
        index = self._by_id.get(id(cls))
        if index is not None:
            return index
        return self._node(_class_label(cls), "class", cls)

    def _const_node(self, module: str, name: str, value: object) -> int:
        index = self._consts.get((module, name))
        if index is not None:
            return index
        index = len(self.nodes)
        self.nodes.append(Node(f"{module}:{name}", "const", value))
        self._consts[(module, name)] = index
        self._pending.append(index)
        return index

    # ------------------------------------------------------------------ building

    def build(self) -> None:
        """Compute every pending node's own digest and edges (discovering new nodes)."""
        nodes = self.nodes
        pending = self._pending
        while pending:
            # Each node is pending exactly once: it is queued when it is created.
            index = self._building = pending.pop()
            node = nodes[index]
            edges: list[int] = []
            if node.kind == "function":
                text = self._function_text(node.obj, edges)  # pyright: ignore[reportArgumentType]
            elif node.kind == "class":
                text = self._class_text(cast("type", node.obj), edges)
            else:
                out: list[str] = []
                self._value(node.obj, out, edges, set())
                text = "".join(out)
            node.digest = _blake(f"{node.kind}\0{text}")
            node.edges = sorted(set(edges))

    def _function_text(self, func: types.FunctionType, edges: list[int]) -> str:
        info = self._code(func.__code__)
        out: list[str] = [info[0], "|g"]
        self._resolve_names(func.__globals__, info, out, edges)
        if func.__defaults__:
            out.append("|d")
            self._shared_value(func.__defaults__, out, edges)
        if func.__kwdefaults__:
            out.append("|k")
            self._shared_value(func.__kwdefaults__, out, edges)
        if func.__closure__:
            out.append("|c")
            for cell_number, cell in enumerate(func.__closure__):
                try:
                    content = cell.cell_contents
                except ValueError:
                    out.append("<empty>,")
                    continue
                self._value(content, out, edges, set())
                self._found(content, ("c", self._building, cell_number))
                out.append(",")
        wrapped = vars(func).get("__wrapped__", _MISSING)
        if wrapped is not _MISSING:
            out.append("|w")
            self._value(wrapped, out, edges, set())
            self._found(wrapped, ("w", self._building))
        return "".join(out)

    def _found(self, value: object, locator: Locator) -> None:
        """Note where the node of ``value`` (if it has one) can be found again, unless
        it was found somewhere already.  A parent is found before its children, so a
        locator that goes through a node made later is not kept."""
        index = self._by_id.get(id(value))
        if index is not None and index > self._building:
            self.locators.setdefault(index, locator)

    def _resolve_names(
        self, namespace: Mapping[str, Any], info: _CodeInfo, out: list[str], edges: list[int]
    ) -> None:
        """Record what each referenced global name is bound to; follow project code."""
        _, global_names, attrs, imports = info
        modules: dict[str, types.ModuleType] = {}
        known = self._namespace(namespace)
        self._look_up(known, known.bound, global_names, "", out=out, edges=edges, modules=modules)
        for imported in imports:
            self._imported(imported, namespace, out, modules)
        # ``helpers.h1`` and ``pkg.sub.f``: look the attribute names up in referenced
        # project modules, and in the modules found that way, until nothing new turns up.
        seen: set[str] = set()
        fresh = sorted(modules) if attrs else []
        while fresh:
            for mod_name in fresh:
                seen.add(mod_name)
                known = self._namespace(vars(modules[mod_name]))
                prefix = f"{mod_name}."
                self._look_up(
                    known, known.attributes, attrs, prefix, out=out, edges=edges, modules=modules
                )
            grown = len(modules) > len(seen)
            fresh = sorted(m for m in modules if m not in seen) if grown else []

    def _namespace(self, namespace: Mapping[str, Any]) -> _Namespace:
        """The bindings of ``namespace``, which the node being built looks names up in."""
        known = self._bindings.get(id(namespace))
        if known is None or known.namespace is not namespace:
            known = self._bindings[id(namespace)] = _Namespace(namespace)
        known.users.add(self._building)
        return known

    def _look_up(
        self,
        known: _Namespace,
        recorded: dict[str, _Bound],
        names: Iterable[str],
        prefix: str,
        *,
        out: list[str],
        edges: list[int],
        modules: dict[str, types.ModuleType],
    ) -> None:
        """Append how each of ``names`` is bound in ``known`` (as a global, or as an
        attribute spelled with ``prefix``), serialising a binding only the first time."""
        namespace, unbound = known.namespace, known.unbound
        for name in names:
            value = namespace.get(name, _MISSING)
            if value is _MISSING:
                unbound.add(name)
                continue
            bound = recorded.get(name)
            if bound is None or bound[0] is not value:
                bound = recorded[name] = self._bound(known, name, value, f"{prefix}{name}=")
            _, text, targets, module = bound
            out.append(text)
            edges.extend(targets)
            if module is not None:
                modules.setdefault(name_text(module.__name__) or "?", module)

    def _bound(self, known: _Namespace, name: str, value: object, prefix: str) -> _Bound:
        """How the binding of ``name`` to ``value`` is recorded (see :data:`_Bound`)."""
        if type(value) is types.FunctionType:
            # The common case, exactly as :meth:`_binding` and :meth:`_value` record it.
            if self._is_project_module(value.__globals__.get("__name__")):
                index = self._function_node(value)
                if known.findable:
                    self.locators.setdefault(index, ("b", known.name, name))
                return value, f"{prefix}<fn {self.nodes[index].label}>;", (index,), None
            return value, f"{prefix}{library_name(value)};", (), None
        out = [prefix]
        edges: list[int] = []
        modules: dict[str, types.ModuleType] = {}
        self._binding(known.name, name, value, out=out, edges=edges, modules=modules)
        if len(edges) == 1 and known.findable and self.nodes[edges[0]].obj is value:
            # A class, or a constant: found again as this very name of this module.
            self.locators.setdefault(edges[0], ("b", known.name, name))
        return value, "".join(out), tuple(edges), next(iter(modules.values()), None)

    def _binding(
        self,
        module_name: str,
        name: str,
        value: object,
        *,
        out: list[str],
        edges: list[int],
        modules: dict[str, types.ModuleType],
    ) -> None:
        kind = type(value)
        if issubclass(kind, types.ModuleType):
            module = name_text(cast("types.ModuleType", value).__name__)
            out.append(f"<module {module}>;")
            if module is not None and self._is_project_module(module):
                modules.setdefault(module, cast("types.ModuleType", value))
            return
        function_or_class = kind is types.FunctionType or issubclass(kind, type)
        if function_or_class or not self._is_project_module(module_name):
            self._value(value, out, edges, set())
            out.append(";")
            return
        # Any other value bound in a project module is a module constant: a node of its
        # own, so that ``explain`` can say "helpers:THRESHOLD changed".
        index = self._const_node(module_name, name, value)
        edges.append(index)
        out.append(f"<const {module_name}:{name}>;")

    def _imported(
        self,
        imported: str,
        namespace: Mapping[str, Any],
        out: list[str],
        modules: dict[str, types.ModuleType],
    ) -> None:
        """A module imported inside a function body (``import x`` / ``from . import y``).

        The token depends on the name only, never on whether a library happens to be
        imported already in this process: two workers must agree.
        """
        out.append(f"<import {imported}>;")
        package = name_text(namespace.get("__package__"))
        candidates = [imported] if imported else []
        if package and package != "?":
            candidates.append(f"{package}.{imported}" if imported else package)
        found_any = False
        for candidate in candidates:
            parts = candidate.split(".")
            for i in range(1, len(parts) + 1):
                found: object = sys.modules.get(".".join(parts[:i]))
                if not issubclass(type(found), types.ModuleType):
                    continue
                module = cast("types.ModuleType", found)
                if self._is_project_module(module.__name__):
                    modules.setdefault(name_text(module.__name__) or "?", module)
            found_any = found_any or candidate in sys.modules
        if found_any:
            return
        # Not imported yet (a deferred import that has not run).  If it is project code,
        # fold in its source so that an edit is not missed: coarse, but never wrong.
        for candidate in candidates:
            digest = self._unimported_source(candidate)
            if digest:
                out.append(f"<source {candidate}:{digest}>;")

    def _unimported_source(self, name: str) -> str:
        cached = self._spec_cache.get(name)
        if cached is not None:
            return cached
        digest = ""
        parent = name.rpartition(".")[0]
        if name and (not parent or parent in sys.modules):
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError, AttributeError):
                spec = None
            origin = spec.origin if spec is not None else None
            if origin and is_project_file(Path(origin)):
                try:
                    digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest()
                except OSError:
                    digest = "unreadable"
        self._spec_cache[name] = digest
        return digest

    def _class_text(self, cls: type, edges: list[int]) -> str:
        out: list[str] = ["bases("]
        for base in cls.__bases__:
            self._value(base, out, edges, set())
            out.append(",")
        out.append(")meta=")
        self._value(type(cls), out, edges, set())
        out.append("|")
        namespace = vars(cls)
        for name in sorted(namespace):
            if name in _CLASS_NOISE:
                continue
            out.append(f"{name}=")
            value = namespace[name]
            self._value(value, out, edges, set())
            self._found(value, ("a", self._building, name))
            out.append(";")
        return "".join(out)

    # ------------------------------------------------------------------ replays

    def seed(
        self,
        recording: Recording,
        objects: list[Any],
        same: list[bool],
        *,
        identified: list[int],
        consts: list[tuple[tuple[str, str], int]],
    ) -> list[int] | None:
        """Take the recorded nodes, found again as ``objects``, with their recorded
        digests and edges; the others than ``same`` are pending (returned), except those
        not found again, which stay as dead nodes that nothing references.
        ``identified`` are the nodes named by their object (all but the constants,
        named by ``consts``).  ``None`` if two recorded nodes are one object now, or one
        is no longer of its kind."""
        self.nodes = _Recorded(recording, objects)
        lost = any(map(operator.is_, objects, itertools.repeat(ABSENT)))
        if lost:
            identified = [i for i in identified if objects[i] is not ABSENT]
        self._by_id = dict(
            zip(map(id, map(objects.__getitem__, identified)), identified, strict=True)
        )
        if len(self._by_id) != len(identified):
            return None
        self._consts = {key: i for key, i in consts if objects[i] is not ABSENT}
        rebuilt = list(itertools.compress(range(len(same)), map(operator.not_, same)))
        if lost:
            rebuilt = [i for i in rebuilt if objects[i] is not ABSENT]
        kinds = recording.kinds
        for index in rebuilt:
            if not is_kind(objects[index], kinds[index]):
                return None
        self.rebuild(rebuilt)
        return rebuilt

    def rebuild(self, indices: list[int]) -> None:
        """Serialise these seeded nodes again at the next :meth:`build` (their labels now)."""
        nodes = self.nodes
        for index in indices:
            node = nodes[index]
            obj = node.obj
            if node.kind == "function":
                node.label = _function_label(cast("types.FunctionType", obj))
            elif node.kind == "class":
                node.label = _class_label(cast("type", obj))
            node.digest = ""
        self._pending.extend(indices)

    def columns(self) -> Columns:
        """Every node's label, digest and edges, as of now (see :meth:`_Nodes.columns`)."""
        return self.nodes.columns()

    @staticmethod
    def reachable(columns: Columns, roots: Iterable[int], reached: Iterable[int] = ()) -> set[int]:
        """The nodes reached from ``roots``, themselves included, a level at a time, and
        the nodes ``reached`` (known to be reached, with all they reach: not walked)."""
        successors = columns[2]
        seen = set(reached)
        level = set(roots) - seen
        seen |= level
        while level:
            level = set(itertools.chain.from_iterable(map(successors.__getitem__, level)))
            level -= seen
            seen |= level
        return seen

    @staticmethod
    def stage_record(columns: Columns, root: int, reach: Iterable[int]) -> StageRecord:
        """A stage's fingerprint from the nodes it reaches (see :meth:`stage_fingerprints`)."""
        labels, digests, _ = columns
        reach = tuple(sorted(reach))
        parts = dict(
            zip(map(labels.__getitem__, reach), map(digests.__getitem__, reach), strict=True)
        )
        if reach and len(parts) == len(reach):  # a label per node, as nearly always
            pairs = sorted(parts.items())
            parts = dict(pairs)
            code = _stage_code(pairs)
            return root, code, tuple(parts), parts, reach
        pairs = set(
            zip(map(labels.__getitem__, reach), map(digests.__getitem__, reach), strict=True)
        )
        fingerprint = _named_apart(sorted(pairs))
        parts = cast("dict[str, str]", fingerprint.parts)  # made by _named_apart: a dict
        return root, fingerprint.code, fingerprint.functions, parts, reach

    def restamp(self, record: StageRecord, changed: Iterable[int]) -> StageRecord | None:
        """``record`` with the new digests of the ``changed`` nodes it reaches (the same
        nodes, the same labels), if its parts name each node it reaches by its label
        alone; ``None`` otherwise (see :func:`_named_apart`): :meth:`stage_record` then.

        The parts stay in label order, so only the stage's code is hashed again.
        """
        root, _, names, parts, reach = record
        if len(parts) != len(reach):
            return None
        nodes = self.nodes
        parts = dict(parts)
        for index in changed:
            label = nodes[index].label
            if label not in parts:
                return None
            parts[label] = nodes[index].digest
        code = _stage_code(parts.items())
        return root, code, names, parts, reach

    def by_id(self, obj: object) -> int | None:
        """The index of the node of ``obj``, if it has one (constants do not)."""
        return self._by_id.get(id(obj))

    def warm_up(self) -> None:
        """Analyse code and write values as a walk does, keeping nothing, so that a
        later walk or replay runs these paths specialised: their first calls in a
        process cost several times the next (~60 us for the first analysis here).  A
        standby worker does this before its load; a fresh graph is used for it."""
        for _ in range(3):
            for code in (Graph.build.__code__, Graph._analyse.__code__, _scan.__code__):
                self._codes.clear()
                self._analyse(code)
            self.plain_text((1, "a", (2.0, None), {"k": [b"x", {0}]}, frozenset({"a", "b"})))

    def plain_text(self, value: object) -> str | None:
        """How a walk serialises ``value`` (a defaults tuple); ``None`` if that reaches
        project code (so this graph is for rendering only)."""
        out: list[str] = []
        edges: list[int] = []
        self._value(value, out, edges, set())
        return None if edges else "".join(out)

    def recording(
        self,
        roots: Mapping[str, int],
        result: Mapping[str, StageFingerprint],
        reached: Mapping[str, tuple[int, ...]],
    ) -> Recording:
        """This walk, for the next load to replay (see :mod:`._replay`)."""
        nodes = self.nodes
        if len(reached) != len(roots):
            reached = self._reached(roots)
        lookups: dict[str, dict[str, Token]] = {}
        for known in self._bindings.values():
            tokens = lookups.setdefault(known.name, {})
            for name, bound in itertools.chain(known.bound.items(), known.attributes.items()):
                tokens[name] = self._token(known, bound)
            for name in known.unbound:
                tokens[name] = -1 if known.findable else False
        recording = Recording(
            modules=tuple(sorted(self._modules)),
            labels=[node.label for node in nodes],
            kinds=[node.kind for node in nodes],
            digests=[node.digest for node in nodes],
            edges=[tuple(node.edges) for node in nodes],
            locators=[self.locators.get(i) for i in range(len(nodes))],
            checks=[self._check(node) for node in nodes],
            lookups=lookups,
            users={module: sorted(users) for module, users in self._users().items()},
            stages={
                stage: (
                    index,
                    result[stage].code,
                    result[stage].functions,
                    dict(result[stage].parts),
                    reached[stage],
                )
                for stage, index in roots.items()
            },
        )
        return recording

    def _users(self) -> dict[str, set[int]]:
        """The nodes that looked names up in each module."""
        users: dict[str, set[int]] = {}
        for known in self._bindings.values():
            users.setdefault(known.name, set()).update(known.users)
        return users

    def update(
        self,
        recording: Recording,
        rebuilt: list[int],
        failed: set[str],
        stages: dict[str, StageRecord],
        moved: Mapping[int, Check],
        *,
        dead: int,
    ) -> Recording | None:
        """``recording`` after a replay that serialised the ``rebuilt`` nodes again and
        made any node from the recorded count on (``failed``: the modules whose names
        were not all bound as recorded; ``moved``: the new checks of nodes kept whose code
        moved; ``dead``: see :attr:`Recording.dead`).  ``None`` if nothing changed."""
        nodes = self.nodes
        count = len(recording.labels)
        columns = _Columns(recording)
        for index in rebuilt:
            node = nodes[index]
            columns.set(index, node, self._check(node))
        for index in range(count, len(nodes)):
            columns.add(nodes[index], self.locators.get(index), self._check(nodes[index]))
        for index, check in moved.items():
            columns.set_check(index, check)
        lookups = recording.lookups
        new_lookups = {module: lookups[module] for module in lookups if module not in failed}
        lookups_changed = bool(failed)
        for known in self._bindings.values():
            old = new_lookups.get(known.name, {})
            tokens = dict(old)
            for name, bound in itertools.chain(known.bound.items(), known.attributes.items()):
                tokens[name] = self._token(known, bound)
            for name in known.unbound:
                tokens[name] = -1 if known.findable else False
            if tokens != old:
                lookups_changed = True
                new_lookups[known.name] = tokens
        users = dict(recording.users)
        for module, used in self._users().items():
            merged = sorted(used.union(users.get(module, ())) if module not in failed else used)
            if merged != users.get(module):
                lookups_changed = True
                users[module] = merged
        unchanged = stages == recording.stages and dead == recording.dead
        if not columns.changed and not lookups_changed and unchanged:
            return None
        return columns.recording(new_lookups, users, stages, dead)

    def _check(self, node: Node) -> Check | None:
        """What a replay checks a plain function node against; ``None``: not plain.

        A plain function also has the names it was made with: its code's qualified name
        and its globals' module name, the very objects.  A replay checks that by
        identity, which never runs code of the project's (see :func:`name_text`).
        """
        func = node.obj
        if (
            type(func) is not types.FunctionType
            or func.__closure__ is not None
            or func.__kwdefaults__ is not None
            or "__wrapped__" in vars(func)
            or func.__qualname__ is not func.__code__.co_qualname
            or type(func.__module__) is not str
            or func.__module__ is not func.__globals__.get("__name__")
        ):
            return None
        code = func.__code__
        key = self._keys.get(id(code))
        info = self._codes.get(id(code))
        known = self._bindings.get(id(func.__globals__))
        cache = self._cache
        if key is None or info is None or info[3] or known is None or not known.findable:
            return None
        path = cache.code_path(code) if cache is not None else None
        if path is None:
            return None
        text = None
        defaults = func.__defaults__
        if defaults is not None:
            shared = self._shared.get(id(defaults))
            if shared is None or shared[0] is not defaults or shared[2]:
                return None
            text = shared[1]
        return (
            known.name,
            code.co_filename,
            key[0],
            path,
            func.__qualname__,
            func.__module__,
            text,
            code_content(code),
            key[1],
        )

    def _token(self, known: _Namespace, bound: _Bound) -> Token:
        """What a replay checks a looked-up name against (see :data:`._recording.Token`)."""
        value, _, targets, _ = bound
        if not known.findable:
            return False
        if issubclass(type(value), types.ModuleType):
            name = cast("object", cast("types.ModuleType", value).__name__)
            return name if type(name) is str and sys.modules.get(name) is value else False
        if type(value) is types.FunctionType or issubclass(type(value), type):
            if targets:
                return targets[0]
            text = library_text(value, self._modules)
            return ("x", text) if text is not None else False
        if len(targets) == 1 and self.nodes[targets[0]].kind == "const":
            return targets[0]
        return False

    def _reached(self, roots: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """The nodes each stage reaches, lowest index first (when ranks cannot say)."""
        count = len(self.nodes)
        reach = self._reachable([1 << (count - 1 - i) for i in range(count)])
        return {stage: tuple(_ranks_in(reach[index], count)) for stage, index in roots.items()}

    # ------------------------------------------------------------------ values

    def _shared_value(self, value: object, out: list[str], edges: list[int]) -> None:
        """:meth:`_value` for an object many functions share (the default arguments of
        one module's functions are one constant tuple): serialised once per run."""
        known = self._shared.get(id(value))
        if known is None or known[0] is not value:
            text: list[str] = []
            targets: list[int] = []
            self._value(value, text, targets, set())
            known = self._shared[id(value)] = (value, "".join(text), tuple(targets))
        out.append(known[1])
        edges.extend(known[2])

    def _value(self, value: object, out: list[str], edges: list[int], path: set[int]) -> None:
        """Append a stable serialisation of ``value``; project code becomes an edge.

        Values are told apart by their type.  ``isinstance`` alone would also ask a value
        that is not of the type for its ``__class__``, and a proxy (of an application
        context, say) answers with code of its own, which may raise.
        """
        kind: type[Any] = type(value)
        if issubclass(kind, _SCALARS):
            out.append(repr(value) if kind in _PLAIN_SCALARS else _scalar_repr(value, kind))
            return
        if kind is types.FunctionType:
            func = cast("types.FunctionType", value)
            if self._is_project_module(func.__globals__.get("__name__")):
                index = self._function_node(func)
                edges.append(index)
                out.append(f"<fn {self.nodes[index].label}>")
            else:
                out.append(library_name(func))
            return
        if issubclass(kind, type):
            cls = cast("type", value)
            if self._is_project_module(cls.__module__):
                index = self._class_node(cls)
                edges.append(index)
                out.append(f"<cls {self.nodes[index].label}>")
            else:
                out.append(library_name(cls))
            return
        if issubclass(kind, types.ModuleType):
            out.append(f"<module {name_text(cast('types.ModuleType', value).__name__)}>")
            return
        if kind is types.CodeType:
            out.append(f"<code {self._code(cast('types.CodeType', value))[0]}>")
            return
        if kind is types.BuiltinFunctionType:
            out.append(f"<builtin {qualified_name(value)}>")
            return
        if id(value) in path:
            out.append("<cycle>")
            return
        path.add(id(value))
        try:
            self._container(value, kind, out, edges, path)
        except RecursionError:
            out.append(f"<deep {qualified_name(kind)}>")
        finally:
            path.discard(id(value))

    def _container(
        self, value: object, kind: type[Any], out: list[str], edges: list[int], path: set[int]
    ) -> None:
        if issubclass(kind, tuple | list):
            out.append("(" if issubclass(kind, tuple) else "[")
            if kind not in (tuple, list):
                out.append(f"<{qualified_name(type(value))}>")
            items = cast("Sequence[object]", value)
            if _all_scalars(items):  # each item as _value writes it, in C
                out.append(",".join(map(repr, items)) + "," if items else "")
            else:
                for item in items:
                    self._value(item, out, edges, path)
                    out.append(",")
            out.append(")")
        elif issubclass(kind, dict):
            out.append("{")
            mapping = cast("dict[object, object]", value)
            if _all_scalars(mapping) and _all_scalars(mapping.values()):
                keys, values = map(repr, mapping), map(repr, mapping.values())
                pairs = map(":".join, zip(keys, values, strict=True))
                out.append(",".join(pairs) + "," if mapping else "")
            else:
                for key, item in mapping.items():
                    self._value(key, out, edges, path)
                    out.append(":")
                    self._value(item, out, edges, path)
                    out.append(",")
            out.append("}")
        elif issubclass(kind, set | frozenset):
            # The iteration order of a set depends on the hash seed: sort the elements'
            # serialisations instead.
            members = cast("Iterable[object]", value)
            if _all_scalars(members):
                texts = list(map(repr, members))
            else:
                texts: list[str] = []
                for item in members:
                    one: list[str] = []
                    self._value(item, one, edges, path)
                    texts.append("".join(one))
            texts.sort()
            out.append("set{" if issubclass(kind, set) else "frozenset{")
            out.append(",".join(texts))
            out.append("}")
        else:
            self._wrapper(value, kind, out, edges, path)

    def _wrapper(
        self, value: object, kind: type[Any], out: list[str], edges: list[int], path: set[int]
    ) -> None:
        """Callables that wrap other callables, enum members, and everything else."""
        if issubclass(kind, functools.partial):
            partial = cast("functools.partial[object]", value)
            out.append("<partial ")
            self._value(partial.func, out, edges, path)
            self._value(partial.args, out, edges, path)
            self._value(partial.keywords, out, edges, path)
            out.append(">")
        elif issubclass(kind, staticmethod | classmethod):
            out.append(f"<{kind.__name__} ")
            self._value(cast("Any", value).__func__, out, edges, path)
            out.append(">")
        elif issubclass(kind, property):
            accessors = cast("property", value)
            out.append("<property ")
            for accessor in (accessors.fget, accessors.fset, accessors.fdel):
                self._value(accessor, out, edges, path)
                out.append(",")
            out.append(">")
        elif kind is types.MethodType:
            method = cast("types.MethodType", value)
            out.append("<method ")
            self._value(method.__func__, out, edges, path)
            self._value(method.__self__, out, edges, path)
            out.append(">")
        elif issubclass(kind, enum.Enum):
            out.append("<enum ")
            self._value(kind, out, edges, path)
            out.append(f".{cast('enum.Enum', value).name}>")
        else:
            self._object(value, kind, out, edges, path)

    def _object(
        self, value: object, cls: type[Any], out: list[str], edges: list[int], path: set[int]
    ) -> None:
        try:
            attrs = getattr(value, "__dict__", None)
        except Exception:  # a proxy's own lookup, which raised
            attrs = None
        if issubclass(type(attrs), dict):
            attrs = cast("dict[str, object]", attrs)
            wrapped = attrs.get("__wrapped__", _MISSING)
            if wrapped is not _MISSING:  # functools.lru_cache and friends
                out.append(f"<wrapper {qualified_name(cls)} ")
                self._value(wrapped, out, edges, path)
                out.append(">")
                return
            if self._is_project_module(cls.__module__):
                out.append("<obj ")
                self._value(cls, out, edges, path)
                for name in sorted(attrs):
                    out.append(f" {name}=")
                    self._value(attrs[name], out, edges, path)
                out.append(">")
                return
        out.append(f"<{qualified_name(cls)} {_object_repr(value)}>")

    # ------------------------------------------------------------------ code objects

    def _code(self, code: types.CodeType, *, nested: bool = False) -> _CodeInfo:
        """The analysis of ``code``, from this run, the persistent cache, or made now.

        A ``nested`` code object (met as a constant while analysing its parent) gets no
        cache entry of its own: its analysis is folded into the parent's entry.  Code
        reached on its own (a function's ``__code__``, even an inner function's) has one.
        """
        info = self._codes.get(id(code))
        if info is not None:
            return info
        cache = None if nested else self._cache
        key = None
        if cache is not None:
            key, info = cache.lookup(code)
            self._keys[id(code)] = key
        if info is None:
            info = self._analyse(code)
            if cache is not None and key is not None:
                cache.put(key, info)
        self._codes[id(code)] = info
        self._alive.append(code)
        return info

    def _analyse(self, code: types.CodeType) -> _CodeInfo:
        """The digest of ``code`` and the names it loads: a function of the code alone."""
        normalised, order, loaded, remap = _scan(code)
        global_names, attrs, imports = loaded
        # Only the constants the instructions load, in the order they are first loaded:
        # that drops a docstring (never loaded) and the index shift it causes.
        consts = code.co_consts
        used = sorted(order, key=order.__getitem__) if remap else range(len(consts))
        digest = hashlib.blake2b(digest_size=16)
        header = (
            code.co_name,
            code.co_argcount,
            code.co_posonlyargcount,
            code.co_kwonlyargcount,
            code.co_flags & ~_CO_HAS_DOCSTRING,
            code.co_names,
            code.co_varnames,
            code.co_freevars,
            code.co_cellvars,
            len(normalised),
            len(code.co_exceptiontable),
        )
        digest.update(repr(header).encode("utf-8", "surrogatepass"))
        digest.update(normalised)
        digest.update(code.co_exceptiontable)
        out: list[str] = []
        dummy_edges: list[int] = []
        for index in used:
            if index >= len(consts):
                continue
            const = consts[index]
            if type(const) is types.CodeType:
                nested_digest, nested_globals, nested_attrs, nested_imports = self._code(
                    const, nested=True
                )
                global_names.update(nested_globals)
                attrs.update(nested_attrs)
                imports.update(nested_imports)
                out.append(f"<code {nested_digest}>")
            else:
                self._value(const, out, dummy_edges, set())
            out.append(",")
        digest.update("".join(out).encode("utf-8", "surrogatepass"))
        return (
            digest.hexdigest(),
            tuple(sorted(global_names)),
            tuple(sorted(attrs)),
            tuple(sorted(imports)),
        )

    # ------------------------------------------------------------------ stages

    def stage_fingerprints(
        self, roots: Mapping[str, int], reached: dict[str, tuple[int, ...]] | None = None
    ) -> dict[str, StageFingerprint]:
        """The fingerprint of each stage, from the node of its function; ``reached`` gets
        the nodes each reaches (if every node has a pair of its own).

        A stage's parts are the distinct ``(label, digest)`` pairs of the nodes it
        reaches, sorted; its code is the digest of those pairs.  The pairs are ranked
        once for the whole graph, and a set of ranks is an ``int`` with a bit per rank:
        a union of two sets is one ``|``, where sets of ints cost an insertion per
        element (reachable sets overlap a lot, so that is most of the work).
        """
        nodes = self.nodes
        pairs = sorted({(node.label, node.digest) for node in nodes})
        count = len(pairs)
        bit_of = {pair: 1 << (count - 1 - rank) for rank, pair in enumerate(pairs)}
        reach = self._reachable([bit_of[node.label, node.digest] for node in nodes])
        labels = [label for label, _ in pairs]
        digests = [digest for _, digest in pairs]
        # Encoded once: a stage's code is the digest of its parts' lines, joined.
        lines = [f"{label}\0{digest}\n".encode("utf-8", "surrogatepass") for label, digest in pairs]
        # A label with two digests (two lambdas of one module, say): a stage reaching
        # both tells them apart by content.
        repeated = {label for label, times in Counter(labels).items() if times > 1}
        ambiguous = sum(bit_of[pair] for pair in pairs if pair[0] in repeated)
        node_of_rank: list[int] | None = None
        if reached is not None and count == len(nodes):
            node_of_rank = [0] * count
            for index, node in enumerate(nodes):
                node_of_rank[count - bit_of[node.label, node.digest].bit_length()] = index
        result: dict[str, StageFingerprint] = {}
        for stage, index in roots.items():
            bits = reach[index]
            ranks = _ranks_in(bits, count)
            if node_of_rank is not None and reached is not None:
                reached[stage] = tuple(node_of_rank[rank] for rank in ranks)
            if bits & ambiguous:
                result[stage] = _named_apart([pairs[rank] for rank in ranks])
                continue
            if len(ranks) == 1:  # itemgetter of one index returns the item, not a tuple
                rank = ranks[0]
                functions: tuple[str, ...] = (labels[rank],)
                parts = {labels[rank]: digests[rank]}
                code = _blake_bytes(lines[rank])
            else:
                pick = operator.itemgetter(*ranks)
                functions = pick(labels)
                parts = dict(zip(functions, pick(digests), strict=True))
                code = _blake_bytes(b"".join(pick(lines)))
            result[stage] = StageFingerprint(code, functions, parts)
        return result

    def _reachable(self, bits: list[int]) -> list[int]:
        """For every node, the union of the ``bits`` of the nodes it reaches (its own too).

        Tarjan's algorithm, iteratively: it emits strongly connected components after
        all the components they reach, so each component's set is its members' bits
        plus the already computed sets of its successors.
        """
        successors = [node.edges for node in self.nodes]
        count = len(successors)
        index_of = [-1] * count
        low = [0] * count
        on_stack = [False] * count
        stack: list[int] = []
        reach = [0] * count
        counter = 0
        for start in range(count):
            if index_of[start] != -1:
                continue
            index_of[start] = low[start] = counter
            counter += 1
            stack.append(start)
            on_stack[start] = True
            work = [(start, iter(successors[start]))]
            while work:
                node, children = work[-1]
                for target in children:
                    if index_of[target] == -1:
                        index_of[target] = low[target] = counter
                        counter += 1
                        stack.append(target)
                        on_stack[target] = True
                        work.append((target, iter(successors[target])))
                        break  # descend; this node's iterator resumes afterwards
                    if on_stack[target] and index_of[target] < low[node]:
                        low[node] = index_of[target]
                else:
                    work.pop()
                    if work:
                        parent = work[-1][0]
                        low[parent] = min(low[parent], low[node])
                    if low[node] == index_of[node]:
                        members = [stack.pop()]
                        while members[-1] != node:
                            members.append(stack.pop())
                        combined = 0
                        for member in members:
                            on_stack[member] = False
                            combined |= bits[member]
                            for target in successors[member]:
                                # Every target's set is complete by now, except those
                                # of the component's own members: still empty.
                                combined |= reach[target]
                        for member in members:
                            reach[member] = combined
        return reach


def _ranks_in(bits: int, count: int) -> list[int]:
    """The ranks whose bits are set, lowest first (rank ``r`` is bit ``count - 1 - r``).

    ``bin`` spells the highest bit first, so it lists the ranks in ascending order.
    """
    text = bin(bits)
    offset = count - len(text)
    ranks: list[int] = []
    at = text.find("1", 2)
    while at != -1:
        ranks.append(at + offset)
        at = text.find("1", at + 1)
    return ranks


def _stage_code(pairs: Iterable[tuple[str, str]]) -> str:
    """A stage's code digest from its parts' ``(name, digest)`` pairs in name order: a
    line ``name\0digest`` each, joined in C (the one spelling a walk, a record made
    again and a restamp all share)."""
    lines = "\n".join(map("\0".join, pairs))
    return _blake(lines + "\n" if lines else "")


def _named_apart(pairs: list[tuple[str, str]]) -> StageFingerprint:
    """A stage's fingerprint from its sorted ``(label, digest)`` pairs, when some label
    may come with two digests: such a label gets its digest's start appended."""
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        repeated = {label for label in labels if labels.count(label) > 1}
        pairs = sorted(
            (f"{label}#{digest[:12]}" if label in repeated else label, digest)
            for label, digest in pairs
        )
    parts = dict(pairs)
    code = _stage_code(pairs)
    return StageFingerprint(code=code, functions=tuple(parts), parts=parts)


def _name_ops() -> tuple[dict[int, int], dict[int, int]]:
    """Opcodes that load a name from ``co_names``, with how far their argument is shifted.

    Global loads and attribute loads, separately.  The encodings are CPython's (3.11:
    ``LOAD_GLOBAL`` carries a flag bit; 3.12 added one to ``LOAD_ATTR`` and two to
    ``LOAD_SUPER_ATTR``).  For a version this was not checked against, every opcode
    with a name argument counts as both kinds: coarser, never blind.
    """
    opmap = dis.opmap
    if sys.version_info >= (3, 15):  # pragma: no cover - unknown encodings
        every = {op: 0 for op in dis.hasname}
        return every, every
    attr_shift = 0 if sys.version_info < (3, 12) else 1
    globals_ = {"LOAD_GLOBAL": 1, "LOAD_NAME": 0, "LOAD_FROM_DICT_OR_GLOBALS": 0}
    attrs = {"LOAD_ATTR": attr_shift, "LOAD_METHOD": 0, "LOAD_SUPER_ATTR": 2, "IMPORT_FROM": 0}
    return (
        {opmap[name]: shift for name, shift in globals_.items() if name in opmap},
        {opmap[name]: shift for name, shift in attrs.items() if name in opmap},
    )


_GLOBAL_OPS, _ATTR_OPS = _name_ops()


def _table(ops: Iterable[int]) -> bytes:
    """A ``bytes.translate`` table mapping ``ops`` to 1 and every other opcode to 0."""
    table = bytearray(256)
    for op in ops:
        if op < 256:  # pseudo-instructions never appear in co_code
            table[op] = 1
    return bytes(table)


_CONST_TABLE = _table(_HASCONST)
_MARKED = re.compile(rb"[^\x00]")
#: Every 16-bit code unit (opcode and argument) that loads a name, to pick the distinct
#: name loads of a code object out of ``set(units)`` in C.
_NAME_OPS = frozenset(_GLOBAL_OPS) | frozenset(_ATTR_OPS) | {_IMPORT_NAME}
_NAME_UNITS = frozenset(
    (op | arg << 8) if sys.byteorder == "little" else (op << 8 | arg)
    for op in _NAME_OPS
    if op < 256
    for arg in range(256)
)

#: (global names, attribute names, imported module names) loaded by one code object.
_Loaded = tuple[set[str], set[str], set[str]]


def _scan(code: types.CodeType) -> tuple[bytearray, dict[int, int], _Loaded, bool]:
    """Renumber loaded constants and collect the names a code object loads.

    Returns the bytecode with each constant index replaced by the order in which the
    constant is first loaded (unless there are too many constants to fit one byte),
    that order, and the names loaded as globals, as attributes, and by ``IMPORT_NAME``.

    Most code units are inline caches and opcodes of no interest here, so the work is
    pushed into C: constant loads are found with ``bytes.translate``, and the distinct
    name loads with a set intersection over the 16-bit code units.
    """
    raw = code.co_code
    ops = raw[::2]
    if _EXTENDED_ARG in ops:
        return _scan_slowly(code)
    args = raw[1::2]
    remap = len(code.co_consts) <= 256
    normalised = bytearray(raw)
    order: dict[int, int] = {}
    for match in _MARKED.finditer(ops.translate(_CONST_TABLE)):
        j = match.start()
        arg = args[j]
        slot = order.get(arg)
        if slot is None:
            slot = order[arg] = len(order)
        if remap:
            normalised[2 * j + 1] = slot
    loaded: _Loaded = (set(), set(), set())
    little = sys.byteorder == "little"
    for unit in _NAME_UNITS.intersection(memoryview(raw).cast("H")):
        op, arg = (unit & 0xFF, unit >> 8) if little else (unit >> 8, unit & 0xFF)
        _note_name(op, arg, code.co_names, loaded)
    return normalised, order, loaded, remap


def _scan_slowly(code: types.CodeType) -> tuple[bytearray, dict[int, int], _Loaded, bool]:
    """:func:`_scan` for code with ``EXTENDED_ARG`` (arguments over 255): every unit."""
    raw = code.co_code
    remap = len(code.co_consts) <= 256
    normalised = bytearray(raw)
    order: dict[int, int] = {}
    loaded: _Loaded = (set(), set(), set())
    ext = 0
    for i in range(0, len(raw), 2):
        op = raw[i]
        arg = raw[i + 1] | ext
        if op == _EXTENDED_ARG:
            ext = arg << 8
            continue
        ext = 0
        if op in _HASCONST:
            slot = order.get(arg)
            if slot is None:
                slot = order[arg] = len(order)
            if remap:
                normalised[i + 1] = slot
            continue
        _note_name(op, arg, code.co_names, loaded)
    return normalised, order, loaded, remap


def _note_name(op: int, arg: int, co_names: tuple[str, ...], loaded: _Loaded) -> None:
    """Add the name instruction ``op arg`` loads to ``loaded``, by how it is loaded."""
    global_names, attrs, imports = loaded
    count = len(co_names)
    shift = _GLOBAL_OPS.get(op)
    if shift is not None and arg >> shift < count:
        global_names.add(co_names[arg >> shift])
    shift = _ATTR_OPS.get(op)
    if shift is not None and arg >> shift < count:
        attrs.add(co_names[arg >> shift])
    if op == _IMPORT_NAME and arg < count:
        imports.add(co_names[arg])
