"""Pure helpers for the paths stages declare.

Every path the supervisor reasons about is a POSIX path relative to the project root,
normalised once.  That single spelling is what lets a changed file reported by the
watcher be matched against declared deps and outs by plain string operations, with no
filesystem access and no platform differences.

A declared path may name a directory; it then stands for everything under it.  Two
paths *overlap* when one contains the other, which is the only relation the DAG needs.
"""

from __future__ import annotations

import posixpath
from typing import Literal

from ._errors import PipelineError

PathKind = Literal["dep", "out"]


def normalize_stage_path(stage: str, path: str, kind: PathKind) -> str:
    """Return ``path`` as a normalised POSIX path relative to the project root.

    >>> normalize_stage_path("clean", "./data//raw.csv", "dep")
    'data/raw.csv'
    >>> normalize_stage_path("clean", "data/out/", "out")
    'data/out'

    Absolute paths, paths that leave the project root and paths that name the root
    itself are rejected: the supervisor watches the project root and nothing else, and
    a stage that owns the whole root would own the pipeline's own source.
    """
    if path.startswith("/"):
        raise PipelineError(
            f"stage {stage!r}: {kind} {path!r} is an absolute path; "
            "declare it relative to the project root, e.g. 'data/raw.csv'"
        )
    normalized = posixpath.normpath(path) if path else "."
    if normalized == ".":
        raise PipelineError(
            f"stage {stage!r}: {kind} {path!r} names the project root itself; "
            "declare a file or a directory inside the project, e.g. 'data/raw.csv'"
        )
    if normalized == ".." or normalized.startswith("../"):
        raise PipelineError(
            f"stage {stage!r}: {kind} {path!r} points outside the project root; "
            "keep every dep and out inside the project directory"
        )
    return normalized


def paths_overlap(a: str, b: str) -> bool:
    """True if ``a`` and ``b`` are the same path or one is a directory containing the other.

    >>> paths_overlap("data", "data/x.csv")
    True
    >>> paths_overlap("data", "database.csv")
    False
    """
    return a == b or b.startswith(a + "/") or a.startswith(b + "/")


def parents(path: str) -> list[str]:
    """The proper ancestors of a relative POSIX path, nearest first.

    >>> parents("a/b/c.csv")
    ['a/b', 'a']
    """
    result: list[str] = []
    head = posixpath.dirname(path)
    while head:
        result.append(head)
        head = posixpath.dirname(head)
    return result
