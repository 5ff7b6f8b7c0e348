"""The up-to-date decision, as a pure function: every rule without files or processes."""

from __future__ import annotations

from pivot_supervise.pipeline._freshness import (
    NOT_FINGERPRINTED,
    Baseline,
    Decision,
    StageState,
    decide,
)

RECORD = Baseline(
    code="c1",
    params="p1",
    deps={"data/raw.csv": "h-raw"},
    outs={"data/clean.csv": "h-clean"},
    functions={"pipeline:clean": "f1", "helpers:parse": "f2"},
)


def state(**changes: object) -> StageState:
    base: dict[str, object] = {
        "code": "c1",
        "params": "p1",
        "deps": {"data/raw.csv": "h-raw"},
        "outs": {"data/clean.csv": "h-clean"},
        "functions": {"pipeline:clean": "f1", "helpers:parse": "f2"},
    }
    base.update(changes)
    return StageState(**base)  # type: ignore[arg-type]


def test_nothing_changed_means_unchanged():
    assert decide(state(), RECORD) == Decision(False)
    assert decide(state(), RECORD).summary == "unchanged"


def test_a_stage_that_never_succeeded_runs():
    assert decide(state(), None).reasons == ("no successful run recorded",)


def test_force_runs_an_up_to_date_stage():
    decision = decide(state(), RECORD, force=True)
    assert decision.run and decision.reasons == ("forced",)


def test_a_code_change_names_the_function_that_changed():
    decision = decide(
        state(code="c2", functions={"pipeline:clean": "f1", "helpers:parse": "f9"}), RECORD
    )
    assert decision.reasons == ("code changed: helpers:parse",)


def test_a_removed_helper_counts_as_a_code_change():
    decision = decide(state(code="c3", functions={"pipeline:clean": "f1"}), RECORD)
    assert decision.reasons == ("code changed: helpers:parse",)


def test_code_that_could_not_be_fingerprinted_runs_and_says_so():
    unknown = state(code=f"{NOT_FINGERPRINTED}a1b2", functions={})
    decision = decide(unknown, RECORD)
    assert decision.run
    assert decision.reasons == ("its code could not be fingerprinted (see the load's warning)",)
    # Its record then holds that fingerprint: the next load, fingerprinted or not, runs.
    recorded = Baseline(f"{NOT_FINGERPRINTED}a1b2", "p1", RECORD.deps, RECORD.outs, {})
    assert decide(state(), recorded).reasons == ("the code of its last run was not fingerprinted",)
    assert decide(state(code=f"{NOT_FINGERPRINTED}c3d4", functions={}), recorded).run


def test_params_change_runs():
    assert decide(state(params="p2"), RECORD).reasons == ("params changed",)


def test_dep_content_change_runs_and_names_the_dep():
    decision = decide(state(deps={"data/raw.csv": "h-new"}), RECORD)
    assert decision.reasons == ("dep 'data/raw.csv' changed",)


def test_missing_dep_runs_so_that_the_stage_fails_clearly():
    decision = decide(state(deps={"data/raw.csv": None}), RECORD)
    assert decision.reasons == ("dep 'data/raw.csv' is missing",)


def test_a_changed_list_of_deps_runs():
    decision = decide(state(deps={"data/raw.csv": "h-raw", "extra.csv": "h"}), RECORD)
    assert decision.reasons == ("its list of deps changed",)


def test_missing_output_runs_its_producer():
    decision = decide(state(outs={"data/clean.csv": None}), RECORD)
    assert decision.reasons == ("output 'data/clean.csv' is missing",)


def test_hand_edited_output_is_reported_but_does_not_run_its_producer():
    decision = decide(state(outs={"data/clean.csv": "h-edited"}), RECORD)
    assert not decision.run
    assert decision.hand_edited == ("data/clean.csv",)


def test_every_reason_is_listed():
    decision = decide(state(params="p2", deps={"data/raw.csv": "h-new"}), RECORD, force=True)
    assert decision.reasons == ("forced", "params changed", "dep 'data/raw.csv' changed")
