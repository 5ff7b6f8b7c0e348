"""The last fingerprinting's walk of the code, as plain data a replay checks.

A :class:`Recording` is what :class:`._graph.Graph` found (its nodes, where each was
found, what each plain function and each looked-up name was bound to, each stage's
result), as lists and tuples that :mod:`marshal` writes into the code cache file; see
:mod:`._replay` for how the next load checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import marshal
import operator
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "ABSENT",
    "Check",
    "Locator",
    "Recording",
    "StageRecord",
    "Token",
    "code_content",
    "is_kind",
    "library_name",
    "library_text",
    "name_text",
    "qualified_name",
]

#: What a lookup finds when there is nothing (a name not bound, a node not found again).
ABSENT: Any = object()
#: Where a node was found: ``("s", stage)`` a stage's function; ``("b", module, name)`` a
#: module's global; ``("a", node, name)`` an attribute in a class's ``__dict__``;
#: ``("w", node)`` a function's ``__wrapped__``; ``("c", node, cell)`` a closure cell.
#: A parent node is always found before its children (its index is lower).
Locator = tuple[Any, ...]
#: What a plain function node is checked against: (module of its globals, its code's
#: ``co_filename``, the digest of the source its code was compiled from and where in
#: that compilation's tree it is (see :meth:`._codecache.CodeAnalysisCache.code_path`),
#: ``__qualname__``, ``__module__``, the text of its defaults or ``None``, the
#: :func:`code_content` of its code, and the code cache's position for its code).
Check = tuple[str, str, str, tuple[int, ...], str, str, str | None, bytes | None, int]
#: What a name looked up in a module was bound to: a node's index (the same object as
#: that node), ``-1`` (unbound), a module's name (that module), ``("x", text)`` (a
#: library object of that rendering), ``False`` (not checkable: always re-walked).
Token = int | str | tuple[str, str] | bool
#: A stage's recorded result: its root node, code digest, part names, parts, and the
#: nodes it reaches.
StageRecord = tuple[int, str, tuple[str, ...], dict[str, str], tuple[int, ...]]

_FUNCTION = types.FunctionType


@dataclass(slots=True)
class Recording:
    """The last walk, as plain data (lists indexed by node), as :func:`marshal` keeps it.

    ``modules`` are the project modules the walk knew, sorted: with others, project code
    and library code are told apart differently, so nothing recorded holds.
    """

    modules: tuple[str, ...]
    labels: list[str]
    kinds: list[str]
    digests: list[str]
    edges: list[tuple[int, ...]]
    locators: list[Locator | None]
    checks: list[Check | None]
    lookups: dict[str, dict[str, Token]]
    users: dict[str, list[int]]
    stages: dict[str, StageRecord]
    #: How many nodes no stage reaches, or more (a replay that only added edges counts
    #: every node it added, without walking the graph to see).
    dead: int = 0

    def pair(self, index: int) -> tuple[str, str]:
        """A node's label and digest."""
        return self.labels[index], self.digests[index]

    def to_data(self) -> tuple[object, ...]:
        """The fields in order, as :meth:`from_data` takes them."""
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    @classmethod
    def from_data(cls, data: object) -> Recording | None:
        """The recording ``data`` holds; ``None`` if it is not one (any other value)."""
        if type(data) is not tuple:
            return None
        values = cast("tuple[Any, ...]", data)
        if len(values) != len(dataclasses.fields(cls)):
            return None
        recording = cls(*values)
        count = len(recording.labels)
        sized = (recording.kinds, recording.digests, recording.edges, recording.locators)
        if any(len(column) != count for column in (*sized, recording.checks)):
            return None
        return recording


def code_content(code: types.CodeType) -> bytes | None:
    """A digest of everything ``code`` is but where it is (its fields, nested code
    included, but its line numbers): equal digests are equal code, whichever line,
    version of its file or compilation it came from.

    How a replay keeps the functions of a saved file whose code did not change, lines
    added above them or not (line numbers never count in a fingerprint either).  The
    fields are written with ``marshal`` format 2, the last without back-references:
    later formats write a constant once and refer to it after, but only if something
    else holds it at the time, so the same code could be written two ways.  A tuple of
    the fields rather than a copy of the code without its lines: ``code.replace`` cost
    as much as the rest.  ``None`` for code ``marshal`` cannot write.
    """
    try:
        written = marshal.dumps(_placeless(code), 2)  # pyright: ignore[reportArgumentType]
        return hashlib.blake2b(written, digest_size=16).digest()
    except ValueError:
        return None


#: What a code object is but for its place (``co_firstlineno``, ``co_linetable``) and
#: its constants (which :func:`_placeless` writes apart, nested code included).
_FIELDS = operator.attrgetter(
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_nlocals",
    "co_stacksize",
    "co_flags",
    "co_code",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
    "co_filename",
    "co_name",
    "co_qualname",
    "co_exceptiontable",
)


def _placeless(code: types.CodeType) -> tuple[object, ...]:
    """``code``'s fields and constants, nested code in them as a list of its own (a
    constant is never a list, so the two cannot be confused)."""
    consts: tuple[object, ...] = code.co_consts
    if types.CodeType in map(type, consts):
        consts = tuple(
            [_placeless(const)] if type(const) is types.CodeType else const for const in consts
        )
    return _FIELDS(code), consts


def library_text(value: object, modules: Mapping[str, object]) -> str | None:
    """How a walk renders a library (not project) function or class bound in project
    globals; ``None`` for anything else.  What a ``("x", text)`` token records."""
    if type(value) is _FUNCTION:
        module = name_text(value.__globals__.get("__name__"))
        return None if module in modules else library_name(value)
    if issubclass(type(value), type):
        cls = cast("type", value)
        return None if name_text(cls.__module__) in modules else library_name(cls)
    return None


def library_name(value: types.FunctionType | type) -> str:
    """How a walk writes a library function or class: by its name alone (its code is
    the environment's business)."""
    kind = "fn" if type(value) is _FUNCTION else "cls"
    return f"<ext-{kind} {qualified_name(value)}>"


def qualified_name(obj: object) -> str:
    """``module:qualname`` of a library object, as a walk names it."""
    module = name_text(getattr(obj, "__module__", None))
    qualname = name_text(getattr(obj, "__qualname__", None)) or name_text(
        getattr(obj, "__name__", None)
    )
    return f"{module}:{qualname}"


def name_text(value: object) -> str | None:
    """A name an object claims (its ``__module__``, ``__qualname__``, a module's
    ``__name__``) as plain text, without running code of the project's.

    Code can set ``__module__`` to anything, and a name to a ``str`` subclass: comparing,
    hashing or formatting such a value runs its methods, which may raise, lie (equal to
    anything) or show an address.  A ``str`` and ``None`` are kept, a ``str`` subclass
    becomes a plain ``str`` of the same characters, anything else ``"?"``.
    """
    if type(value) is str or value is None:
        return value
    if issubclass(type(value), str):
        return str.__str__(
            cast("str", value)
        )  # a plain copy: the subclass's methods are not called
    return "?"


def is_kind(value: object, kind: str) -> bool:
    """Whether ``value`` would become a node of ``kind`` (see ``_Graph._binding``)."""
    if kind == "function":
        return type(value) is _FUNCTION
    if kind == "class":
        return issubclass(type(value), type)
    if kind == "const":
        return not issubclass(type(value), types.ModuleType | _FUNCTION | type)
    return True
