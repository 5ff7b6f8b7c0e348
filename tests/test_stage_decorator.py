"""``@stage(...)``: what it records, and every mistake it refuses at import time."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pytest

from pivot_supervise.pipeline._errors import PipelineError
from pivot_supervise.pipeline._registry import REGISTRY, Registration, StageRegistry
from pivot_supervise.pipeline._stage import stage


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    REGISTRY.clear()
    yield
    REGISTRY.clear()


def clean() -> None:
    """A module-level function, the only kind of thing a stage may be."""


def train() -> None:
    pass


class NotAFunction:
    def method(self) -> None:
        pass


def test_decorator_returns_the_function_unchanged() -> None:
    assert stage(deps=["data/raw.csv"], outs=["data/clean.csv"])(clean) is clean


def test_decorator_records_name_function_module_and_paths() -> None:
    stage(deps=["data/raw.csv"], outs=["data/clean.csv"])(clean)
    assert REGISTRY.registrations() == (
        Registration(
            name="clean",
            func=clean,
            module=__name__,
            deps=("data/raw.csv",),
            outs=("data/clean.csv",),
        ),
    )


def test_registrations_keep_decoration_order() -> None:
    stage()(train)
    stage()(clean)
    assert [r.name for r in REGISTRY.registrations()] == ["train", "clean"]


def test_pathlike_paths_and_tuples_are_accepted_as_strings() -> None:
    stage(deps=(PurePosixPath("data") / "raw.csv",), outs=[PurePosixPath("out")])(clean)
    (registration,) = REGISTRY.registrations()
    assert registration.deps == ("data/raw.csv",)
    assert registration.outs == ("out",)


def test_paths_are_recorded_as_given_not_normalised() -> None:
    stage(deps=["./data//raw.csv"])(clean)
    assert REGISTRY.registrations()[0].deps == ("./data//raw.csv",)


def test_duplicate_names_are_recorded_for_the_validator_to_reject() -> None:
    stage()(clean)
    stage()(clean)
    assert len(REGISTRY.registrations()) == 2


def test_clear_empties_a_registry() -> None:
    registry = StageRegistry()
    registry.record(Registration("a", clean, __name__, (), ()))
    registry.clear()
    assert registry.registrations() == ()


def test_bare_decorator_without_parentheses_is_refused() -> None:
    bare: Any = stage
    with pytest.raises(PipelineError, match=r"use @stage\(\.\.\.\) with parentheses") as info:
        bare(clean)
    assert "'clean'" in str(info.value)
    assert REGISTRY.registrations() == ()


def test_a_class_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"NotAFunction.*class, not a function"):
        stage()(NotAFunction)


def test_a_lambda_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"lambda"):
        stage()(lambda: None)


def test_a_builtin_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"len.*not a function"):
        stage()(len)


def test_a_partial_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"partial.*not a function"):
        stage()(functools.partial(clean))


def test_a_nested_function_is_refused_by_name() -> None:
    def inner() -> None:
        pass

    with pytest.raises(PipelineError, match=r"inner.*not a module-level function"):
        stage()(inner)


def test_a_method_is_refused_by_qualified_name() -> None:
    with pytest.raises(PipelineError, match=r"NotAFunction\.method.*not a module-level"):
        stage()(NotAFunction.method)


def test_a_bare_string_dep_says_to_wrap_it_in_a_list() -> None:
    bad: Any = "data/raw.csv"
    with pytest.raises(PipelineError, match=r"wrap it in a list: deps=\['data/raw.csv'\]") as info:
        stage(deps=bad)(clean)
    assert "'clean'" in str(info.value)


def test_a_bare_path_out_says_to_wrap_it_in_a_list() -> None:
    bad: Any = PurePosixPath("out.csv")
    with pytest.raises(PipelineError, match=r"wrap it in a list: outs=\['out.csv'\]"):
        stage(outs=bad)(clean)


def test_paths_must_be_a_list_or_tuple() -> None:
    bad: Any = {"data/raw.csv"}
    with pytest.raises(PipelineError, match=r"clean.*deps must be a list of paths, got set"):
        stage(deps=bad)(clean)


@pytest.mark.parametrize("entry", [42, None, b"data/raw.csv"])
def test_every_path_entry_must_be_a_str_or_pathlike(entry: object) -> None:
    bad: Any = ["ok.csv", entry]
    with pytest.raises(PipelineError, match=r"clean.*every entry of outs") as info:
        stage(outs=bad)(clean)
    assert repr(entry) in str(info.value)


def test_nothing_is_recorded_when_the_decorator_refuses() -> None:
    bad: Any = "a.csv"
    with pytest.raises(PipelineError):
        stage(deps=bad)(clean)
    assert REGISTRY.registrations() == ()
