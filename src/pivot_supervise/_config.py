"""Project configuration: ``[tool.pivot-supervise]`` or ``pivot-supervise.toml``.

Configuration is read by the supervisor before anything starts, so every mistake in it
is reported up front, as a :class:`ConfigError` naming the file, the key and the value
that was expected; each new generation's validating worker reads the ``pipeline`` and
``params`` settings again (:func:`pipeline_files`).  Unknown keys are errors rather
than warnings: a misspelt ``ignore`` that is silently dropped means a watcher that
re-runs stages on every save of a scratch file, and nobody would connect the two.

Settings live in exactly one place.  When both files configure the tool, which one
wins would be a rule to remember; refusing is simpler.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, cast

PYPROJECT = "pyproject.toml"
OWN_FILE = "pivot-supervise.toml"
TABLE = "tool.pivot-supervise"

_MAX_DEBOUNCE_MS = 10_000


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and what to write."""


@dataclass(frozen=True, slots=True)
class Config:
    """Resolved settings of one project.

    ``pipeline`` and ``params`` are POSIX paths relative to ``project_root``.
    ``watch`` globs name extra files whose change reloads the pipeline like a code
    change; ``ignore`` globs name files that are never watched.  ``preload`` names
    third-party modules every worker imports when it starts (so a standby generation
    has already paid for them); never project code.  ``source`` is the file
    the settings came from, or ``None`` when the defaults apply.
    """

    project_root: Path
    pipeline: str = "pipeline.py"
    params: str = "params.toml"
    watch: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    max_workers: int | None = None
    debounce_ms: int = 50
    preload: tuple[str, ...] = ()
    source: Path | None = None

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied, skipping ``None`` (a CLI flag not given).

        >>> Config(Path("proj")).with_overrides(max_workers=None, debounce_ms=10).debounce_ms
        10
        """
        given = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given)


def load_config(project_root: Path) -> Config:
    """Read the configuration of the project at ``project_root``.

    Looks at ``[tool.pivot-supervise]`` in ``pyproject.toml`` and at the top level of
    ``pivot-supervise.toml``; with neither, the defaults apply.
    """
    if not project_root.is_dir():
        raise ConfigError(
            f"project root {str(project_root)!r} does not exist or is not a directory; "
            "run from the project directory or pass an existing one"
        )
    root = project_root.resolve()
    found: list[tuple[Path, Mapping[str, object]]] = []

    pyproject = root / PYPROJECT
    if pyproject.is_file():
        tool = _read_toml(pyproject).get("tool")
        tables = cast("dict[str, object]", tool) if isinstance(tool, dict) else {}
        table = tables.get("pivot-supervise")
        if table is not None:
            if not isinstance(table, dict):
                raise ConfigError(f"{pyproject}: [{TABLE}] must be a table")
            found.append((pyproject, cast("dict[str, object]", table)))

    own = root / OWN_FILE
    if own.is_file():
        found.append((own, _read_toml(own)))

    if len(found) > 1:
        raise ConfigError(
            f"pivot-supervise is configured in two places: [{TABLE}] in {pyproject} and "
            f"{own}; keep the settings in one of them and remove the other"
        )
    if not found:
        return Config(project_root=root)
    source, table = found[0]
    return Config(project_root=root, source=source, **_parse(source, table))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(source: Path, table: Mapping[str, object]) -> dict[str, Any]:
    """Turn a TOML table into ``Config`` keyword arguments, checking every value."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        field = key.replace("-", "_")
        check = _CHECKS.get(field) if key in _ACCEPTED else None
        if check is None:
            valid = ", ".join(sorted(_CHECKS))
            raise ConfigError(f"{source}: unknown setting {key!r}; valid settings are: {valid}")
        if field in values:
            raise ConfigError(
                f"{source}: {field!r} is set twice (as {field!r} and "
                f"{field.replace('_', '-')!r}); keep one"
            )
        values[field] = check(source, key, raw)
    return values


def _bad(source: Path, key: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {key} = {value!r} is invalid; expected {expected}")


def _python_file(source: Path, key: str, value: object) -> str:
    expected = "a relative path to a .py file, e.g. 'pipeline.py'"
    path = _relative_path(source, key, value, expected)
    if not path.endswith(".py"):
        raise _bad(source, key, value, expected)
    return path


def _params_file(source: Path, key: str, value: object) -> str:
    return _relative_path(source, key, value, "a relative path to a file, e.g. 'params.toml'")


def _relative_path(source: Path, key: str, value: object, expected: str) -> str:
    if not isinstance(value, str) or not value or value.startswith("/"):
        raise _bad(source, key, value, expected)
    path = posixpath.normpath(value)
    if path in (".", "..") or path.startswith("../"):
        raise _bad(source, key, value, expected)
    return path


def _globs(source: Path, key: str, value: object) -> tuple[str, ...]:
    if _is_glob_list(value):
        return tuple(value)
    raise _bad(source, key, value, "a list of glob strings, e.g. ['*.yaml', 'conf/**']")


def _is_glob_list(value: object) -> TypeGuard[list[str]]:
    items = cast("list[object]", value) if isinstance(value, list) else None
    return items is not None and all(isinstance(item, str) and item for item in items)


def _max_workers(source: Path, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(source, key, value, "a whole number of at least 1")
    return value


def _debounce_ms(source: Path, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_DEBOUNCE_MS:
        raise _bad(
            source, key, value, f"a whole number of milliseconds from 0 to {_MAX_DEBOUNCE_MS}"
        )
    return value


def _module_names(source: Path, key: str, value: object) -> tuple[str, ...]:
    expected = "a list of importable module names, e.g. ['numpy', 'pandas.core']"
    if not isinstance(value, list):
        raise _bad(source, key, value, expected)
    names: list[str] = []
    for item in cast("list[object]", value):
        if not isinstance(item, str) or not all(part.isidentifier() for part in item.split(".")):
            raise ConfigError(f"{source}: {key} entry {item!r} is invalid; expected {expected}")
        names.append(item)
    return tuple(names)


_CHECKS: dict[str, Callable[[Path, str, object], object]] = {
    "pipeline": _python_file,
    "params": _params_file,
    "watch": _globs,
    "ignore": _globs,
    "max_workers": _max_workers,
    "debounce_ms": _debounce_ms,
    "preload": _module_names,
}
_ACCEPTED = frozenset({*_CHECKS, "max-workers", "debounce-ms"})


def pipeline_files(project_root: Path) -> tuple[str, str]:
    """The pipeline and params files as the project's configuration says *now*.

    Each new generation reads them again (in the worker that validates it), so that
    saving a changed ``pipeline`` or ``params`` setting during ``watch`` loads the files
    it names (a bad value is then a failed reload, and the last good generation keeps
    serving).  The other settings (watch and ignore globs, max_workers, debounce_ms)
    are read once, at start.  Raises :class:`ConfigError`.
    """
    current = load_config(project_root)
    return current.pipeline, current.params
