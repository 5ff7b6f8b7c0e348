"""Incremental runs, the I/O half: gather the facts, ask :func:`decide`, record results.

The decision itself is pure (:mod:`pivot_supervise.pipeline._freshness`).  This module
hashes deps and outputs (through a stat-keyed cache, so unchanged files are not read
again), reads and writes the SQLite state store, and keeps the run history.  Everything
here blocks on the disk, so the supervisor calls it from worker threads.

The order of operations is what makes a crash harmless: dep hashes are taken *before* a
stage runs (an edit during the run is seen next time), the stage's record is dropped
before it starts (a crash means it runs again), and output hashes are taken after it
succeeded, in the same transaction that stores the new record.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ..pipeline._freshness import Baseline, Decision, StageState, decide
from ..pipeline._hashing import ContentHasher
from ..pipeline._model import StageOutcome, StageSpec
from ._events import Event
from ._state import OutputState, RunRecord, StageRecord, StateStore, StateStoreError

log = structlog.get_logger("pivot_supervise.incremental")


@dataclass(frozen=True, slots=True)
class Check:
    """A decision, with the state it was made on (the dep hashes taken before a run)."""

    decision: Decision
    state: StageState
    #: Whether the store held a record of the stage's last success.
    recorded: bool = False


class Incremental:
    """The project's state store and hash cache, and what a stage's run means to them."""

    def __init__(self, root: Path, store: StateStore) -> None:
        self._root = root
        self.store = store
        self.hasher = ContentHasher(root)
        with contextlib.suppress(StateStoreError):
            self.hasher.load_rows(store.load_hash_cache())
        self._lock = threading.Lock()
        self._history_runs: dict[int, int] = {}

    @classmethod
    def open(cls, project_root: Path) -> Incremental:
        """Open the state store of ``project_root`` (raises :class:`StateStoreError`)."""
        root = project_root.resolve()
        return cls(root, StateStore.open(root))

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.store.warnings

    # ----------------------------------------------------------------- decisions

    def current_state(self, spec: StageSpec) -> StageState:
        """What holds now for ``spec``: its fingerprints, and its deps' and outs' hashes."""
        return StageState(
            code=spec.code_fingerprint,
            params=spec.params_digest,
            deps={path: self.hasher.hash_path(path) for path in spec.deps},
            outs={path: self.hasher.hash_path(path) for path in spec.outs},
            functions=spec.code_parts,
        )

    def check(self, spec: StageSpec, *, force: bool = False) -> Check:
        """Decide whether ``spec`` must run now."""
        return self._check(spec, self.store.record(spec.name), force=force)

    def _check(self, spec: StageSpec, record: StageRecord | None, *, force: bool) -> Check:
        state = self.current_state(spec)
        return Check(decide(state, _baseline(record), force=force), state, record is not None)

    def prepare_many(self, stages: Iterable[tuple[StageSpec, bool]]) -> list[Check]:
        """Decide for each ``(spec, force)``; forget the record of each stage that must
        run before it starts (one read, one write; one trip off the trio thread)."""
        stages = list(stages)
        records = self.store.records_of(spec.name for spec, _ in stages)
        checks = [self._check(spec, records.get(spec.name), force=force) for spec, force in stages]
        stale = [
            spec.name
            for (spec, _), check in zip(stages, checks, strict=True)
            if check.decision.run and check.recorded
        ]
        if stale:  # a run that never finishes must run again
            self.store.drop(*stale)
        return checks

    def after_success(
        self, spec: StageSpec, check: Check, outcome: StageOutcome, *, run_id: int
    ) -> None:
        """Record a successful run: the deps as hashed before it, the outputs as now.

        ``run_id`` is the supervisor's run id; the record keeps the history's.
        """
        outs = {
            path: OutputState(self.hasher.hash_path(path), outcome.out_signatures.get(path))
            for path in spec.outs
        }
        self.store.save_success(
            StageRecord(
                stage=spec.name,
                code=spec.code_fingerprint,
                params=spec.params_digest,
                deps=dict(check.state.deps),
                outs=outs,
                generation=outcome.generation,
                run_id=self._history_runs.get(run_id, 0),
                code_parts=dict(spec.code_parts),
            )
        )

    def after_successes(
        self, successes: Iterable[tuple[StageSpec, Check, StageOutcome]], *, run_id: int
    ) -> None:
        """:meth:`after_success` for several stages of one run, in one transaction."""
        with self.store.transaction():
            for spec, check, outcome in successes:
                self.after_success(spec, check, outcome, run_id=run_id)

    # ------------------------------------------------------------------- history

    def record_events(self, events: Iterable[Event]) -> None:
        """Keep the run history from a batch of the supervisor's events, in order, in
        one transaction."""
        with self.store.transaction():
            for event in events:
                self.record_event(event)

    def record_event(self, event: Event) -> None:
        """Keep the run history from the supervisor's events."""
        with self._lock:
            if event.name == "run_started":
                self._history_runs[event.get("run_id")] = self.store.start_run(
                    str(event.get("trigger")), int(event.get("generation") or 0)
                )
            elif event.name == "stage_finished":
                run_id = self._history_runs.get(event.get("run_id"))
                if run_id is not None:
                    self.store.finish_stage(
                        run_id,
                        str(event.get("stage")),
                        str(event.get("status")),
                        generation=int(event.get("generation") or 0),
                        reason=event.get("reason"),
                        duration_ms=event.get("duration_ms"),
                        pid=event.get("pid"),
                        error=event.get("error"),
                    )
            elif event.name == "run_finished":
                run_id = self._history_runs.pop(event.get("run_id"), None)
                if run_id is not None:
                    self.store.finish_run(run_id, outcome=_outcome(event))

    def close(self) -> None:
        with contextlib.suppress(StateStoreError):
            self.store.save_hash_cache(self.hasher.to_rows())
        self.store.close()


def _baseline(record: StageRecord | None) -> Baseline | None:
    if record is None:
        return None
    return Baseline(
        code=record.code,
        params=record.params,
        deps={path: digest or "" for path, digest in record.deps.items()},
        outs={path: state.hash or "" for path, state in record.outs.items()},
        functions=record.code_parts,
    )


def _outcome(event: Event) -> str:
    if event.get("failed"):
        return "failed"
    if event.get("cancelled"):
        return "cancelled"
    return "ok"


def explain_lines(
    specs: Iterable[StageSpec], checks: Mapping[str, Check], upstream: Mapping[str, Iterable[str]]
) -> list[str]:
    """Human lines for ``explain``: per stage, whether it would run and exactly why."""
    will_run: set[str] = set()
    lines: list[str] = []
    for spec in specs:
        check = checks[spec.name]
        decision = check.decision
        running_upstream = sorted(set(upstream[spec.name]) & will_run)
        if decision.run:
            will_run.add(spec.name)
            lines.append(f"{spec.name}: would run")
            lines += [f"    - {reason}" for reason in decision.reasons]
        elif running_upstream:
            lines.append(
                f"{spec.name}: up to date now, but runs if {', '.join(running_upstream)} "
                "changes its outputs"
            )
        else:
            lines.append(f"{spec.name}: up to date")
        lines += [
            f"    - output '{path}' was edited by hand; it is left alone (its consumers see it "
            "as changed input)"
            for path in decision.hand_edited
        ]
    return lines


def run_json(run: RunRecord) -> dict[str, Any]:
    """A run of the history as JSON-ready data (``history --json``, the API)."""
    return {
        "run_id": run.run_id,
        "trigger": run.trigger,
        "generation": run.generation,
        "started_at": when(run.started_at),
        "finished_at": when(run.finished_at) if run.finished_at is not None else None,
        "outcome": run.outcome,
        "stages": [
            {
                "stage": line.stage,
                "status": line.status,
                "reason": line.reason,
                "duration_ms": line.duration_ms,
                "pid": line.pid,
                "generation": line.generation,
                "error": line.error,
            }
            for line in run.stages
        ],
    }


def when(timestamp: float) -> str:
    """A timestamp as ISO 8601 UTC, to the second."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
