"""Path classification for the watcher: ignored, code (reload), or other (maybe data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivot_supervise._config import Config
from pivot_supervise.supervisor._classify import PathClassifier, PathKind


def classifier(**settings: object) -> PathClassifier:
    return PathClassifier(Config(project_root=Path("project")).with_overrides(**settings))


@pytest.mark.parametrize(
    "path",
    [
        ".git/index",
        "sub/.git/HEAD",
        ".venv/lib/python3.11/site-packages/x.py",
        "venv/bin/python",
        ".tox/py311/log.txt",
        ".nox/x",
        "web/node_modules/pkg/index.js",
        "pkg/__pycache__/mod.cpython-311.pyc",
        ".mypy_cache/x.json",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        ".idea/workspace.xml",
        ".vscode/settings.json",
        "src/my_pkg.egg-info/PKG-INFO",
        ".pivot-supervise/state.json",
        "mod.pyc",
        "mod.pyo",
        ".pipeline.py.swp",
        ".pipeline.py.swx",
        "pipeline.py~",
        ".#pipeline.py",
        "#pipeline.py#",
        "data/4913",
        ".git",
    ],
)
def test_tool_editor_and_cache_paths_are_ignored(path: str) -> None:
    assert classifier().classify(path) is PathKind.IGNORED


@pytest.mark.parametrize("path", ["data/out.tmp", "data/table.bak", "env/raw.csv", "notes.txt"])
def test_data_a_user_may_declare_is_not_ignored(path: str) -> None:
    assert classifier().classify(path) is PathKind.OTHER


@pytest.mark.parametrize(
    "path",
    ["pipeline.py", "params.toml", "pyproject.toml", "pivot-supervise.toml", "lib/helpers.py"],
)
def test_python_files_and_pipeline_definition_files_are_code(path: str) -> None:
    assert classifier().classify(path) is PathKind.CODE


def test_config_files_count_as_code_only_at_the_root() -> None:
    assert classifier().classify("vendor/pyproject.toml") is PathKind.OTHER


def test_configured_pipeline_and_params_files_are_code() -> None:
    c = classifier(pipeline="flows/main.py", params="conf/p.yaml")
    assert c.classify("conf/p.yaml") is PathKind.CODE
    assert c.classify("params.toml") is PathKind.OTHER


def test_watch_globs_make_paths_code() -> None:
    c = classifier(watch=("*.yaml", "conf/**"))
    assert c.classify("deep/dir/settings.yaml") is PathKind.CODE
    assert c.classify("conf/sub/x.json") is PathKind.CODE
    assert c.classify("data/x.json") is PathKind.OTHER


def test_ignore_globs_without_a_slash_match_a_name_at_any_depth() -> None:
    c = classifier(ignore=("*.log", "scratch"))
    assert c.classify("logs/run.log") is PathKind.IGNORED
    assert c.classify("a/scratch/b.csv") is PathKind.IGNORED
    assert c.classify("a/scratchpad.csv") is PathKind.OTHER


def test_ignore_globs_with_a_slash_are_anchored_at_the_root() -> None:
    c = classifier(ignore=("data/tmp", "/build/"))
    assert c.classify("data/tmp/x.csv") is PathKind.IGNORED
    assert c.classify("other/data/tmp/x.csv") is PathKind.OTHER
    assert c.classify("build/lib/x.py") is PathKind.IGNORED


def test_ignore_globs_also_silence_python_files() -> None:
    assert classifier(ignore=("notebooks",)).classify("notebooks/a.py") is PathKind.IGNORED


def test_ignore_globs_never_silence_the_pipeline_or_params() -> None:
    c = classifier(ignore=("*.py", "*.toml"))
    assert c.classify("pipeline.py") is PathKind.CODE
    assert c.classify("params.toml") is PathKind.CODE
    assert c.classify("lib/helpers.py") is PathKind.IGNORED


def test_unnormalised_relative_paths_are_classified_like_normalised_ones() -> None:
    assert classifier().classify("./lib//x.py") is PathKind.CODE


def test_the_project_root_itself_is_ignored() -> None:
    assert classifier().classify(".") is PathKind.IGNORED


@pytest.mark.parametrize(
    ("rel_dir", "ignored"),
    [
        (".git", True),
        ("pkg/__pycache__", True),
        ("a/b.egg-info", True),
        ("scratch", True),
        ("data/scratch/deeper", True),
        ("data", False),
        ("", False),
        (".", False),
    ],
)
def test_dir_is_ignored_prunes_built_in_and_user_ignored_directories(
    rel_dir: str, ignored: bool
) -> None:
    assert classifier(ignore=("scratch",)).dir_is_ignored(rel_dir) is ignored
