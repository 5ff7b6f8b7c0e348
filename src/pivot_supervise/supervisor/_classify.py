"""What a changed path means to the supervisor: nothing, code, or (maybe) data.

The watcher reports raw paths; the core needs to know whether a change reloads the
pipeline (a new generation of workers) or may only re-run stages.  Getting this wrong
is expensive in both directions: treating an editor's swap file as data wakes the core
on every keystroke, and treating a config file as data runs stages with stale code.

Classification is pure string work on POSIX paths relative to the project root, so it
is cheap per event and needs no filesystem.  ``OTHER`` does not mean "data": the core
matches ``OTHER`` paths against declared deps and outs and drops the rest.
"""

from __future__ import annotations

import enum
import fnmatch
import posixpath
import re
from collections.abc import Iterable

from .._config import OWN_FILE, PYPROJECT, Config
from .._state_dir import STATE_DIR

#: Directories never worth watching, at any depth: VCS metadata, environments, caches,
#: editor settings, and our own state directory (watching it would trigger ourselves).
IGNORED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".hypothesis",
        ".idea",
        ".vscode",
        STATE_DIR,
    }
)

#: File names never worth watching: bytecode, and the swap/backup files editors write
#: next to a file while it is edited (vim's ``4913`` is its probe for a writable dir).
#: Deliberately narrow: a data file a user might declare (``*.tmp``, ``*.bak``) stays.
IGNORED_FILE_GLOBS = ("*.pyc", "*.pyo", "*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913")


class PathKind(enum.Enum):
    IGNORED = "ignored"
    CODE = "code"
    OTHER = "other"


class _Globs:
    """User globs, fnmatch-style, matched against a relative POSIX path.

    A glob without a slash matches any single component (``"*.log"`` matches
    ``"logs/a.log"``; ``"scratch"`` matches everything under any ``scratch/``).  A glob
    with a slash is anchored at the project root and matches the path or any of its
    ancestors (``"data/tmp"`` matches ``"data/tmp/x.csv"``); a leading or trailing
    slash is ignored.  ``*`` may cross slashes, so ``"conf/**"`` and ``"conf/*"`` both
    match everything under ``conf/``.
    """

    __slots__ = ("_anchored", "_component")

    def __init__(self, globs: Iterable[str]) -> None:
        component: list[str] = []
        anchored: list[str] = []
        for glob in globs:
            pattern = glob.strip("/")
            if not pattern:
                continue
            (anchored if "/" in glob.rstrip("/") else component).append(fnmatch.translate(pattern))
        self._component = _compile(component)
        self._anchored = _compile(anchored)

    def match(self, rel_path: str) -> bool:
        if self._component is not None and any(
            self._component.match(part) for part in rel_path.split("/")
        ):
            return True
        if self._anchored is not None:
            head = rel_path
            while head:
                if self._anchored.match(head):
                    return True
                head = posixpath.dirname(head)
        return False


def _compile(regexes: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{r})" for r in regexes)) if regexes else None


class PathClassifier:
    """Classify paths relative to the project root for one :class:`Config`.

    The order of the checks is the policy: built-in ignores first (nothing in ``.venv``
    is ever code), then the files that define the pipeline (so a user ignore glob can
    never silence a change to the pipeline or its params), then user ignores, then
    other code (``*.py`` and watch globs).
    """

    __slots__ = ("_essential", "_ignore", "_watch")

    def __init__(self, config: Config) -> None:
        self._essential = frozenset(
            {
                posixpath.normpath(config.pipeline),
                posixpath.normpath(config.params),
                PYPROJECT,
                OWN_FILE,
            }
        )
        self._ignore = _Globs(config.ignore)
        self._watch = _Globs(config.watch)

    def classify(self, rel_path: str) -> PathKind:
        path = _clean(rel_path)
        if not path or _builtin_ignored(path):
            return PathKind.IGNORED
        if path in self._essential:
            return PathKind.CODE
        if self._ignore.match(path):
            return PathKind.IGNORED
        if path.endswith(".py") or self._watch.match(path):
            return PathKind.CODE
        return PathKind.OTHER

    def dir_is_ignored(self, rel_dir: str) -> bool:
        """True if nothing under ``rel_dir`` can matter, so a watcher may prune it."""
        path = _clean(rel_dir)
        if not path:
            return False
        parts = path.split("/")
        return any(_ignored_dir_name(part) for part in parts) or self._ignore.match(path)


_IGNORED_FILE = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in IGNORED_FILE_GLOBS))


def _clean(rel_path: str) -> str:
    path = posixpath.normpath(rel_path) if rel_path else "."
    return "" if path == "." else path.lstrip("/")


def _ignored_dir_name(name: str) -> bool:
    return name in IGNORED_DIRS or name.endswith(".egg-info")


def _builtin_ignored(path: str) -> bool:
    parts = path.split("/")
    return any(_ignored_dir_name(p) for p in parts) or _IGNORED_FILE.match(parts[-1]) is not None
