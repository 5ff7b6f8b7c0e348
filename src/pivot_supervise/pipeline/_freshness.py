"""Is a stage up to date?  The decision, as a pure function over plain data.

What was true after the stage's last successful run (:class:`Baseline`) is compared
with what is true now (:class:`StageState`).  Gathering either is I/O (hashing files,
reading the state store) and happens elsewhere; deciding is this module, so every rule
below is tested without files or processes.

A stage runs when:

* it never succeeded (or its record was dropped because a run started and never
  finished);
* its code fingerprint changed (the function, or a project function, class or constant
  it reaches), or its code could not be fingerprinted (:data:`NOT_FINGERPRINTED`);
* its params changed, or its declared deps or outs lists changed;
* a dep's content changed (an upstream stage's new output included) or a dep is
  missing;
* one of its outputs is missing;
* it is forced.

An output that exists but whose content differs from what the stage wrote was edited
by hand: that is never a reason to run its producer (which would overwrite the edit
behind the user's back); it is reported, and its consumers see a changed dep.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: How the code fingerprint of a stage whose code could not be fingerprinted begins
#: (the rest is a token of the load): it equals no other, so the stage always runs.
NOT_FINGERPRINTED = "not fingerprinted:"


@dataclass(frozen=True, slots=True)
class Baseline:
    """What held after the stage's last successful run."""

    code: str
    params: str
    deps: Mapping[str, str]
    outs: Mapping[str, str]
    functions: Mapping[str, str] = field(default_factory=dict[str, str])


@dataclass(frozen=True, slots=True)
class StageState:
    """What holds now: fingerprints from the loaded pipeline, hashes from the disk.

    A hash of ``None`` means the path does not exist.
    """

    code: str
    params: str
    deps: Mapping[str, str | None]
    outs: Mapping[str, str | None]
    functions: Mapping[str, str] = field(default_factory=dict[str, str])


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to run, every reason for it, and the outputs a person edited."""

    run: bool
    reasons: tuple[str, ...] = ()
    hand_edited: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        if self.run:
            return "; ".join(self.reasons)
        return "unchanged"


def decide(state: StageState, record: Baseline | None, *, force: bool = False) -> Decision:
    """Decide whether a stage must run; see the module docstring for the rules."""
    reasons: list[str] = []
    if force:
        reasons.append("forced")
    if record is None:
        reasons.append("no successful run recorded")
        return Decision(True, tuple(reasons))
    reasons += _code_reasons(state, record)
    if state.params != record.params:
        reasons.append("params changed")
    if set(state.deps) != set(record.deps):
        reasons.append("its list of deps changed")
    if set(state.outs) != set(record.outs):
        reasons.append("its list of outs changed")
    for path, digest in sorted(state.deps.items()):
        if digest is None:
            reasons.append(f"dep '{path}' is missing")
        elif path in record.deps and digest != record.deps[path]:
            reasons.append(f"dep '{path}' changed")
    hand_edited: list[str] = []
    for path, digest in sorted(state.outs.items()):
        if digest is None:
            reasons.append(f"output '{path}' is missing")
        elif path in record.outs and digest != record.outs[path]:
            hand_edited.append(path)
    return Decision(bool(reasons), tuple(reasons), tuple(hand_edited))


def diff_parts(
    old: Mapping[str, str], new: Mapping[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(changed, added, removed)`` names between two ``parts`` mappings, each sorted."""
    changed = tuple(sorted(k for k in new.keys() & old.keys() if new[k] != old[k]))
    added = tuple(sorted(new.keys() - old.keys()))
    removed = tuple(sorted(old.keys() - new.keys()))
    return changed, added, removed


def _code_reasons(state: StageState, record: Baseline) -> list[str]:
    if state.code == record.code:
        return []
    if state.code.startswith(NOT_FINGERPRINTED):
        return ["its code could not be fingerprinted (see the load's warning)"]
    if record.code.startswith(NOT_FINGERPRINTED):
        return ["the code of its last run was not fingerprinted"]
    changed, added, removed = diff_parts(record.functions, state.functions)
    if changed or added or removed:
        names = ", ".join([*sorted(changed + added), *removed])
        return [f"code changed: {names}"]
    return ["code changed"]
