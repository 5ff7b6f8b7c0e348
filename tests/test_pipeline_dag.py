"""The stage graph: validation messages, order, closures and path lookups."""

from __future__ import annotations

import itertools
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pivot_supervise.pipeline._dag import PipelineGraph, build_snapshot
from pivot_supervise.pipeline._errors import PipelineError
from pivot_supervise.pipeline._model import PipelineSnapshot, StageSpec
from pivot_supervise.pipeline._paths import normalize_stage_path, paths_overlap


def spec(
    name: str, deps: tuple[str, ...] = (), outs: tuple[str, ...] = (), module: str = "pipeline"
) -> StageSpec:
    return StageSpec(name=name, module=module, deps=deps, outs=outs)


# A small pipeline used by several tests:
#   raw.csv -> clean -> data/clean.csv -> features -> data/features/ -> train -> model.pkl
#                                      \-> report (reads data/clean.csv and model.pkl)
PIPELINE = [
    spec("report", deps=("data/clean.csv", "model.pkl"), outs=("report.html",)),
    spec("train", deps=("data/features/x.parquet",), outs=("model.pkl",)),
    spec("features", deps=("data/clean.csv",), outs=("data/features",)),
    spec("clean", deps=("raw.csv",), outs=("data/clean.csv",)),
]


# --- paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_path", "expected"),
    [
        ("data/raw.csv", "data/raw.csv"),
        ("./data//raw.csv", "data/raw.csv"),
        ("data/out/", "data/out"),
        ("data/../other.csv", "other.csv"),
    ],
)
def test_normalize_stage_path_gives_one_spelling(given_path: str, expected: str) -> None:
    assert normalize_stage_path("clean", given_path, "dep") == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("/abs/raw.csv", "absolute path"),
        ("../outside.csv", "outside the project root"),
        ("data/../../outside.csv", "outside the project root"),
        ("..", "outside the project root"),
        ("", "project root itself"),
        (".", "project root itself"),
        ("data/..", "project root itself"),
    ],
)
def test_normalize_stage_path_refuses_paths_outside_the_project(bad: str, message: str) -> None:
    with pytest.raises(PipelineError, match=message) as info:
        normalize_stage_path("clean", bad, "out")
    assert "'clean'" in str(info.value)
    assert f"out {bad!r}" in str(info.value)


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("data", "data", True),
        ("data", "data/x.csv", True),
        ("data/x.csv", "data", True),
        ("data", "database.csv", False),
        ("data/a", "data/b", False),
        ("data-1/x", "data", False),
    ],
)
def test_paths_overlap_when_equal_or_one_contains_the_other(a: str, b: str, overlap: bool) -> None:
    assert paths_overlap(a, b) is overlap


# --- order and edges ---------------------------------------------------------------


def test_order_is_topological_with_ties_broken_by_declaration_order() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.order == ("clean", "features", "train", "report")
    assert [s.name for s in graph.stages] == list(graph.order)


def test_independent_stages_keep_their_declaration_order() -> None:
    graph = PipelineGraph([spec("c"), spec("a"), spec("b")])
    assert graph.order == ("c", "a", "b")


def test_a_dep_inside_an_output_directory_is_an_edge() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.upstream("train") == {"features"}
    assert graph.downstream("features") == {"train"}


def test_a_dep_on_a_directory_containing_an_output_is_an_edge() -> None:
    graph = PipelineGraph([spec("b", deps=("data",)), spec("a", outs=("data/a.csv",))])
    assert graph.upstream("b") == {"a"}
    assert graph.order == ("a", "b")


def test_direct_neighbours() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.upstream("report") == {"clean", "train"}
    assert graph.downstream("clean") == {"features", "report"}
    assert graph.upstream("clean") == frozenset()


def test_closures_include_the_given_names_and_everything_transitive() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.upstream_closure(["train"]) == {"train", "features", "clean"}
    assert graph.downstream_closure(["features"]) == {"features", "train", "report"}
    assert graph.downstream_closure([]) == frozenset()


def test_unknown_names_are_listed_once_in_the_order_given() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.unknown(["nope", "clean", "zzz", "nope"]) == ["nope", "zzz"]


def test_queries_about_an_unknown_stage_raise_key_error_naming_it() -> None:
    graph = PipelineGraph(PIPELINE)
    with pytest.raises(KeyError, match=r"nope"):
        graph.upstream_closure(["nope"])
    with pytest.raises(KeyError, match=r"nope"):
        graph.sort(["nope"])


def test_sort_puts_names_in_topological_order_once_each() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.sort(["report", "clean", "train", "clean"]) == ["clean", "train", "report"]


# --- path lookups ------------------------------------------------------------------


def test_producers_of_a_file_under_an_output_directory() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.producers_of("data/features/x.parquet") == {"features"}


def test_producers_of_a_directory_containing_outputs() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.producers_of("data") == {"clean", "features"}


def test_producers_of_a_path_sharing_only_a_string_prefix_is_empty() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.producers_of("data/clean.csv.bak") == frozenset()
    assert graph.producers_of("database.csv") == frozenset()


def test_consumers_of_an_input_and_of_an_output() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.consumers_of("raw.csv") == {"clean"}
    assert graph.consumers_of("data/clean.csv") == {"features", "report"}
    assert graph.consumers_of("data/features") == {"train"}
    assert graph.consumers_of("unrelated.txt") == frozenset()


def test_lookups_accept_unnormalised_paths() -> None:
    graph = PipelineGraph(PIPELINE)
    assert graph.consumers_of("./raw.csv") == {"clean"}
    assert graph.producers_of("data/features/") == {"features"}


def test_external_deps_are_the_deps_no_stage_produces() -> None:
    graph = PipelineGraph([*PIPELINE, spec("extra", deps=("conf/a.yaml", "model.pkl"))])
    assert graph.external_deps() == (("clean", "raw.csv"), ("extra", "conf/a.yaml"))


# --- validation ----------------------------------------------------------------------


def test_duplicate_stage_names_name_the_stage_and_both_modules() -> None:
    with pytest.raises(PipelineError, match=r"duplicate stage name 'clean'") as info:
        PipelineGraph([spec("clean", module="pipeline"), spec("clean", module="more_stages")])
    assert "pipeline" in str(info.value)
    assert "more_stages" in str(info.value)


def test_duplicate_stage_names_in_one_module_say_so() -> None:
    with pytest.raises(PipelineError, match=r"'clean': defined twice in module pipeline"):
        PipelineGraph([spec("clean"), spec("clean")])


def test_two_stages_writing_one_output_are_both_named() -> None:
    with pytest.raises(PipelineError, match=r"stages 'a' and 'b' write the same output") as info:
        PipelineGraph([spec("a", outs=("x.csv",)), spec("b", outs=("x.csv",))])
    assert "'x.csv'" in str(info.value)


def test_an_output_inside_another_stages_output_directory_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"'data/x.csv'.*'data'|'data'.*'data/x.csv'") as info:
        PipelineGraph([spec("a", outs=("data",)), spec("b", outs=("data/x.csv",))])
    assert "'a'" in str(info.value)
    assert "'b'" in str(info.value)


def test_a_stage_may_declare_nested_outputs_of_its_own() -> None:
    graph = PipelineGraph([spec("a", outs=("data", "data/x.csv"))])
    assert graph.order == ("a",)


def test_a_stage_reading_its_own_output_is_a_cycle_of_one() -> None:
    with pytest.raises(PipelineError, match=r"dependency cycle: a -> a") as info:
        PipelineGraph([spec("a", deps=("data/x.csv",), outs=("data",))])
    assert "'data/x.csv'" in str(info.value)


def test_a_cycle_is_named_in_data_flow_order() -> None:
    stages = [
        spec("b", deps=("a.csv",), outs=("b.csv",)),
        spec("a", deps=("c.csv",), outs=("a.csv",)),
        spec("free", outs=("free.csv",)),
        spec("c", deps=("b.csv", "free.csv"), outs=("c.csv",)),
    ]
    with pytest.raises(PipelineError, match=r"dependency cycle: b -> c -> a -> b \(") as info:
        PipelineGraph(stages)
    assert "'c' reads 'b.csv' from 'b'" in str(info.value)


def test_invalid_paths_are_refused_naming_the_stage() -> None:
    with pytest.raises(PipelineError, match=r"stage 'clean': dep '/data/raw\.csv'"):
        PipelineGraph([spec("clean", deps=("/data/raw.csv",))])


def test_build_snapshot_orders_and_normalises_stages() -> None:
    snapshot = build_snapshot(
        [spec("b", deps=("./a.csv",)), spec("a", outs=("a.csv/",))],
        warnings=["careful"],
        code_digest="abc",
    )
    assert snapshot.names == ("a", "b")
    assert snapshot["b"].deps == ("a.csv",)
    assert snapshot["a"].outs == ("a.csv",)
    assert snapshot.warnings == ("careful",)
    assert snapshot.code_digest == "abc"


def test_build_snapshot_refuses_an_invalid_pipeline() -> None:
    with pytest.raises(PipelineError, match=r"duplicate"):
        build_snapshot([spec("a"), spec("a")])


# --- properties over random pipelines ------------------------------------------------


@st.composite
def acyclic_pipelines(draw: st.DrawFn) -> tuple[list[StageSpec], set[tuple[str, str]]]:
    """Stages ``s0..sN`` where ``s_i`` reads only from ``s_j`` with ``j < i``, declared in
    a shuffled order.  Outputs are directories or files; deps name the output itself or a
    file under it.  Returns the stages and the intended ``(producer, consumer)`` edges."""
    n = draw(st.integers(min_value=1, max_value=12))
    outs = [f"s{i}" if draw(st.booleans()) else f"s{i}.csv" for i in range(n)]
    edges: set[tuple[str, str]] = set()
    stages: list[StageSpec] = []
    for i in range(n):
        producers = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        deps = [f"in{i}.csv"]
        for j in sorted(producers):
            under = not outs[j].endswith(".csv") and draw(st.booleans())
            deps.append(f"{outs[j]}/f.csv" if under else outs[j])
            edges.add((f"s{j}", f"s{i}"))
        stages.append(spec(f"s{i}", deps=tuple(deps), outs=(outs[i],)))
    return draw(st.permutations(stages)), edges


@given(acyclic_pipelines())
def test_order_respects_every_edge(pipeline: tuple[list[StageSpec], set[tuple[str, str]]]) -> None:
    stages, edges = pipeline
    graph = PipelineGraph(stages)
    position = {name: i for i, name in enumerate(graph.order)}
    assert sorted(graph.order) == sorted(s.name for s in stages)
    for producer, consumer in edges:
        assert position[producer] < position[consumer]
        assert producer in graph.upstream(consumer)
        assert consumer in graph.downstream(producer)


@given(acyclic_pipelines())
def test_closures_are_transitive_and_mirror_each_other(
    pipeline: tuple[list[StageSpec], set[tuple[str, str]]],
) -> None:
    graph = PipelineGraph(pipeline[0])
    for a in graph.order:
        down = graph.downstream_closure([a])
        assert graph.downstream_closure(down) == down
        assert graph.upstream_closure(graph.upstream_closure([a])) == graph.upstream_closure([a])
        for b in graph.order:
            assert (b in down) == (a in graph.upstream_closure([b]))


@given(acyclic_pipelines(), st.sampled_from(["s0", "s1/f.csv", "s1", "s2.csv", "in1.csv", "x"]))
def test_path_lookups_agree_with_a_linear_scan(
    pipeline: tuple[list[StageSpec], set[tuple[str, str]]], path: str
) -> None:
    graph = PipelineGraph(pipeline[0])
    assert graph.producers_of(path) == {
        s.name for s in graph.stages if any(paths_overlap(o, path) for o in s.outs)
    }
    assert graph.consumers_of(path) == {
        s.name for s in graph.stages if any(paths_overlap(d, path) for d in s.deps)
    }


@given(acyclic_pipelines(), st.data())
def test_a_planted_cycle_is_always_reported_with_real_edges(
    pipeline: tuple[list[StageSpec], set[tuple[str, str]]], data: st.DataObject
) -> None:
    stages, _ = pipeline
    names = [s.name for s in stages]
    ring = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    by_name = {s.name: s for s in stages}
    for producer, consumer in itertools.pairwise([*ring, ring[0]]):
        old = by_name[consumer]
        by_name[consumer] = spec(consumer, deps=(*old.deps, *by_name[producer].outs), outs=old.outs)
    cyclic = [by_name[n] for n in names]

    with pytest.raises(PipelineError, match=r"dependency cycle: ") as info:
        PipelineGraph(cyclic)

    found = re.search(r"dependency cycle: (\S+(?: -> \S+)+) \(", str(info.value))
    assert found is not None
    reported = found.group(1).split(" -> ")
    assert reported[0] == reported[-1]
    assert len(set(reported[:-1])) == len(reported) - 1
    outs = {s.name: s.outs for s in cyclic}
    for producer, consumer in itertools.pairwise(reported):
        assert any(
            paths_overlap(dep, out) for dep in by_name[consumer].deps for out in outs[producer]
        ), (producer, consumer)


def test_a_snapshot_survives_pickling_whole() -> None:
    """Snapshots travel between processes (load replies, validated pipelines)."""
    stages = (
        StageSpec(
            "train",
            "pipeline",
            ("data/x.csv",),
            ("model.pkl",),
            {"lr": 0.1},
            "f" * 64,
            {"pipeline:train": "d" * 32},
            "p" * 64,
        ),
        spec("report", deps=("model.pkl",)),
    )
    snapshot = PipelineSnapshot(stages, ("a warning",), "c" * 64)
    copy = pickle.loads(pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL))
    assert copy == snapshot
    assert copy.stages[0].code_parts == {"pipeline:train": "d" * 32}
    assert copy["report"] == stages[1], "the name index is rebuilt"
