"""The stage graph: validation, topological order and "what does this path touch".

The supervisor asks two kinds of question.  Once per pipeline load: is this pipeline
valid, and in what order do its stages run?  Once per changed file, in the hot path of
the watcher: which stages read or write this path?  The first is answered by building
a :class:`PipelineGraph` (which refuses invalid pipelines with a message naming the
offenders); the second by indexes built once, so a lookup costs the depth of the path
plus a binary search, not a scan of every stage.

Edges follow the data: ``b`` depends on ``a`` when a dep of ``b`` overlaps an out of
``a`` (see :func:`~._paths.paths_overlap`).
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import posixpath
from collections.abc import Iterable, Sequence

from ._errors import PipelineError
from ._model import PipelineSnapshot, StageSpec
from ._paths import normalize_stage_path, parents


class _PathIndex:
    """Declared paths of many stages, searchable by overlap with any path.

    Overlap with ``p`` means: an entry equal to ``p``, an entry that is a directory
    above ``p`` (found by walking ``p``'s parents through a dict), or an entry below
    ``p`` (a contiguous range of the sorted entries: every string starting with
    ``p + "/"`` sorts between ``p + "/"`` and ``p + "0"``, since ``"0"`` follows ``"/"``).
    """

    __slots__ = ("_owners", "_sorted")

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self._owners: dict[str, list[str]] = {}
        for path, stage in entries:
            owners = self._owners.setdefault(path, [])
            if stage not in owners:
                owners.append(stage)
        self._sorted = sorted(self._owners)

    def matches(self, path: str) -> list[tuple[str, str]]:
        """Every ``(entry, stage)`` whose entry overlaps ``path``."""
        found: list[str] = []
        if path == ".":
            found.extend(self._sorted)
        else:
            found.extend(p for p in (path, *parents(path)) if p in self._owners)
            lo = bisect.bisect_left(self._sorted, path + "/")
            hi = bisect.bisect_left(self._sorted, path + "0", lo)
            found.extend(self._sorted[lo:hi])
        return [(entry, stage) for entry in found for stage in self._owners[entry]]

    def stages(self, path: str) -> frozenset[str]:
        return frozenset(stage for _, stage in self.matches(path))


class PipelineGraph:
    """A validated set of stages and the dependency edges between them.

    Construction raises :class:`PipelineError` for duplicate stage names, outputs
    claimed by two stages, and dependency cycles (a stage reading its own output is a
    cycle of one).  After that, the graph is immutable and every query is cheap.
    """

    __slots__ = (
        "_by_name",
        "_consumers",
        "_downstream",
        "_position",
        "_producers",
        "_upstream",
        "order",
        "stages",
    )

    order: tuple[str, ...]
    stages: tuple[StageSpec, ...]

    def __init__(self, stages: Sequence[StageSpec]) -> None:
        specs = [_normalized(spec) for spec in stages]
        self._by_name = _unique_by_name(specs)
        self._producers = _PathIndex((out, s.name) for s in specs for out in s.outs)
        self._consumers = _PathIndex((dep, s.name) for s in specs for dep in s.deps)
        _check_disjoint_outputs(specs, self._producers)

        upstream: dict[str, set[str]] = {s.name: set() for s in specs}
        downstream: dict[str, set[str]] = {s.name: set() for s in specs}
        # The dep of the consumer through which each edge exists, for cycle messages.
        via: dict[tuple[str, str], str] = {}
        for spec in specs:
            for dep in spec.deps:
                for out, producer in self._producers.matches(dep):
                    if producer == spec.name:
                        raise PipelineError(
                            f"dependency cycle: {producer} -> {producer} (stage "
                            f"{producer!r} reads its own output: dep {dep!r} overlaps "
                            f"out {out!r}); a stage cannot depend on what it writes"
                        )
                    upstream[spec.name].add(producer)
                    downstream[producer].add(spec.name)
                    via.setdefault((producer, spec.name), dep)
        self._upstream = {name: frozenset(ps) for name, ps in upstream.items()}
        self._downstream = {name: frozenset(cs) for name, cs in downstream.items()}

        self.order = _topological_order([s.name for s in specs], upstream, downstream, via)
        self._position = {name: i for i, name in enumerate(self.order)}
        self.stages = tuple(self._by_name[name] for name in self.order)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, name: str) -> StageSpec:
        return self._by_name[self._known(name)]

    def upstream(self, name: str) -> frozenset[str]:
        """The stages ``name`` reads from directly."""
        return self._upstream[self._known(name)]

    def downstream(self, name: str) -> frozenset[str]:
        """The stages that read ``name``'s outputs directly."""
        return self._downstream[self._known(name)]

    def upstream_closure(self, names: Iterable[str]) -> frozenset[str]:
        """``names`` plus every stage they transitively read from."""
        return self._closure(names, self._upstream)

    def downstream_closure(self, names: Iterable[str]) -> frozenset[str]:
        """``names`` plus every stage that transitively reads their outputs."""
        return self._closure(names, self._downstream)

    def producers_of(self, path: str) -> frozenset[str]:
        """Stages with an output overlapping ``path``.

        A changed file under an output directory, or an output file under a changed
        directory, both count: either way the stage's output was touched.
        """
        return self._producers.stages(_lookup_key(path))

    def consumers_of(self, path: str) -> frozenset[str]:
        """Stages with a dep overlapping ``path``: the ones a change of ``path`` affects."""
        return self._consumers.stages(_lookup_key(path))

    def external_deps(self) -> tuple[tuple[str, str], ...]:
        """``(stage, dep)`` for every dep no stage produces: the pipeline's inputs."""
        return tuple(
            (spec.name, dep)
            for spec in self.stages
            for dep in spec.deps
            if not self._producers.matches(dep)
        )

    def sort(self, names: Iterable[str]) -> list[str]:
        """``names`` (deduplicated) in the graph's topological order."""
        return sorted({self._known(n) for n in names}, key=self._position.__getitem__)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names that are not stages of this graph, in the order given, once each."""
        return list(dict.fromkeys(n for n in names if n not in self._by_name))

    def _closure(self, names: Iterable[str], edges: dict[str, frozenset[str]]) -> frozenset[str]:
        seen = {self._known(n) for n in names}
        todo = list(seen)
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def _known(self, name: str) -> str:
        if name not in self._by_name:
            raise KeyError(f"no stage named {name!r}")
        return name


def build_snapshot(
    stages: Sequence[StageSpec], warnings: Iterable[str] = (), code_digest: str = ""
) -> PipelineSnapshot:
    """Validate ``stages`` and freeze them, in topological order, into a snapshot."""
    graph = PipelineGraph(stages)
    return PipelineSnapshot(stages=graph.stages, warnings=tuple(warnings), code_digest=code_digest)


def _normalized(spec: StageSpec) -> StageSpec:
    deps = tuple(normalize_stage_path(spec.name, p, "dep") for p in spec.deps)
    outs = tuple(normalize_stage_path(spec.name, p, "out") for p in spec.outs)
    if deps == spec.deps and outs == spec.outs:
        return spec
    return dataclasses.replace(spec, deps=deps, outs=outs)


def _lookup_key(path: str) -> str:
    """Normalise a queried path leniently: a query is not a declaration, never an error."""
    return posixpath.normpath(path) if path else "."


def _unique_by_name(specs: Sequence[StageSpec]) -> dict[str, StageSpec]:
    by_name: dict[str, StageSpec] = {}
    for spec in specs:
        first = by_name.get(spec.name)
        if first is not None:
            where = (
                f"twice in module {spec.module}"
                if first.module == spec.module
                else f"in module {first.module} and in module {spec.module}"
            )
            raise PipelineError(
                f"duplicate stage name {spec.name!r}: defined {where}; "
                "stage names must be unique, rename one of the functions"
            )
        by_name[spec.name] = spec
    return by_name


def _check_disjoint_outputs(specs: Sequence[StageSpec], producers: _PathIndex) -> None:
    """Refuse two stages writing one path (or one writing inside the other's directory).

    Otherwise "who produced this file" has two answers, and the supervisor could not
    tell which stage to re-run when a user edits it.
    """
    for spec in specs:
        for out in spec.outs:
            for other_out, other in producers.matches(out):
                if other == spec.name:
                    continue
                if other_out == out:
                    detail = f"both declare out {out!r}"
                else:
                    detail = f"out {out!r} of {spec.name!r} overlaps out {other_out!r} of {other!r}"
                raise PipelineError(
                    f"stages {spec.name!r} and {other!r} write the same output: {detail}; "
                    "every output must belong to exactly one stage"
                )


def _topological_order(
    names: Sequence[str],
    upstream: dict[str, set[str]],
    downstream: dict[str, set[str]],
    via: dict[tuple[str, str], str],
) -> tuple[str, ...]:
    """Kahn's algorithm; among ready stages the one declared first runs first.

    A stable order makes runs, logs and tests reproducible, and matches the order a
    user reads in ``pipeline.py``.
    """
    index = {name: i for i, name in enumerate(names)}
    missing = {name: len(upstream[name]) for name in names}
    ready = [index[name] for name in names if missing[name] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for consumer in downstream[name]:
            missing[consumer] -= 1
            if missing[consumer] == 0:
                heapq.heappush(ready, index[consumer])
    if len(order) < len(names):
        stuck = {name for name in names if missing[name] > 0}
        raise PipelineError(_describe_cycle(_find_cycle(stuck, upstream, index), via))
    return tuple(order)


def _find_cycle(stuck: set[str], upstream: dict[str, set[str]], index: dict[str, int]) -> list[str]:
    """One cycle among the stages Kahn's algorithm could not order, in data-flow order.

    Every stuck stage has a stuck producer, so walking producers from any stuck stage
    must revisit one; the walk from that first revisit is a cycle.  It is rotated to
    start at its earliest-declared stage so the message does not depend on set order.
    """
    walk: list[str] = []
    seen: dict[str, int] = {}
    node = min(stuck, key=index.__getitem__)
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = min((p for p in upstream[node] if p in stuck), key=index.__getitem__)
    cycle = walk[seen[node] :][::-1]  # producers first
    start = cycle.index(min(cycle, key=index.__getitem__))
    return cycle[start:] + cycle[:start]


def _describe_cycle(cycle: list[str], via: dict[tuple[str, str], str]) -> str:
    closed = [*cycle, cycle[0]]
    reads = ", ".join(
        f"{consumer!r} reads {via[(producer, consumer)]!r} from {producer!r}"
        for producer, consumer in itertools.pairwise(closed)
    )
    return (
        f"dependency cycle: {' -> '.join(closed)} ({reads}); "
        "remove one of these deps or move the output it reads to another path"
    )
