"""The ``@stage`` decorator: the only thing a pipeline author imports from us.

It returns the function unchanged, so a stage stays a plain function the user can call
and test.  Everything it rejects, it rejects at import time with a message naming the
function, because that is when the user is looking: a typo found while a worker
imports the pipeline is shown before the new generation is ever promoted.

Stages must be module-level functions because workers receive them pickled *by
reference* (module plus qualified name) and import the module themselves; that is what
makes a fresh worker run the code as it is on disk now.  Lambdas, nested functions,
methods and partials would be pickled by value or not at all.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar, cast

from ._errors import PipelineError
from ._registry import REGISTRY, Registration

_F = TypeVar("_F", bound=Callable[..., Any])

PathArg = str | os.PathLike[str]


class _Missing:
    __slots__ = ()


_MISSING: Final = _Missing()
#: The default deps and outs (nothing to check).
_NO_PATHS: Final[tuple[str, ...]] = ()


def stage(
    _func: object = _MISSING,
    /,
    *,
    deps: Sequence[PathArg] = _NO_PATHS,
    outs: Sequence[PathArg] = _NO_PATHS,
) -> Callable[[_F], _F]:
    """Declare a module-level function as a pipeline stage.

    Example::

        @stage(deps=["data/raw.csv"], outs=["data/clean.csv"])
        def clean() -> None:
            ...

    ``deps`` and ``outs`` are paths relative to the project root; a path may name a
    directory, which then stands for every file under it.  The stage's name is the
    function's name.
    """
    if not isinstance(_func, _Missing):
        name = getattr(_func, "__name__", repr(_func))
        raise PipelineError(
            f"@stage was used without parentheses on {name!r}; "
            "use @stage(...) with parentheses, e.g. @stage(deps=[...], outs=[...])"
        )

    def decorate(func: _F) -> _F:
        name, module = _check_function(func)
        where = f"stage {name!r} (module {module})"
        registration = Registration(
            name=name,
            func=func,
            module=module,
            deps=_check_paths(where, "deps", deps),
            outs=_check_paths(where, "outs", outs),
        )
        REGISTRY.record(registration)
        return func

    return decorate


def _check_function(func: object) -> tuple[str, str]:
    """Return ``(name, module)`` of a stage function, or say why it cannot be one."""
    if not isinstance(func, types.FunctionType):
        kind = "a class" if isinstance(func, type) else f"a {type(func).__name__} object"
        raise PipelineError(
            f"@stage(...) was applied to {func!r}, which is {kind}, not a function; "
            "decorate a function defined with 'def' at the top level of a module"
        )
    name = func.__name__
    module = func.__module__
    qualname = func.__qualname__
    if name == "<lambda>":
        raise PipelineError(
            f"@stage(...) was applied to a lambda in module {module}; "
            "define the stage with 'def' at the top level of the module"
        )
    if "<locals>" in qualname or "." in qualname:
        raise PipelineError(
            f"stage {qualname!r} (module {module}) is not a module-level function; "
            "move it to the top level of the module so workers can import it by name"
        )
    return name, module


def _check_paths(where: str, kind: str, value: object) -> tuple[str, ...]:
    """Accept a list or tuple of ``str``/``PathLike[str]``; return them as strings."""
    if value is _NO_PATHS:  # the default: most stages' deps or outs
        return ()
    single = _as_path(value)
    if single is not None:
        raise PipelineError(
            f"{where}: {kind} must be a list of paths, got the single path {single!r}; "
            f"wrap it in a list: {kind}=[{single!r}]"
        )
    if not isinstance(value, list | tuple):
        raise PipelineError(
            f"{where}: {kind} must be a list of paths, got {type(value).__name__} "
            f"{value!r}; write e.g. {kind}=['data/file.csv']"
        )
    paths: list[str] = []
    for item in cast("Sequence[object]", value):
        path = _as_path(item)
        if path is None:
            raise PipelineError(
                f"{where}: every entry of {kind} must be a str or os.PathLike path, "
                f"got {type(item).__name__} {item!r}"
            )
        paths.append(path)
    return tuple(paths)


def _as_path(value: object) -> str | None:
    """``os.fspath(value)`` if that is a ``str``, else ``None`` (bytes paths included)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, os.PathLike):
        return None
    # A PathLike[bytes] passes the isinstance check above; only str paths are valid.
    path = cast("str | bytes", os.fspath(cast("os.PathLike[str]", value)))
    return path if isinstance(path, str) else None
