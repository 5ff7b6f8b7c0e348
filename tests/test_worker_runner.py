"""Running one stage: captured output, errors, missing deps and outputs, signatures.

The stage runs in the test process, with the project root as working directory (as in
a worker, which changes into it when it loads the pipeline).
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pivot_supervise.pipeline._model import StageOutcome
from pivot_supervise.workers._capture import OUTPUT_LIMIT
from pivot_supervise.workers._loader import LoadedPipeline, load_pipeline
from pivot_supervise.workers._runner import CaptureMode, execute_stage

PIPELINE = textwrap.dedent(
    """
    import os
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from pivot_supervise.pipeline._stage import stage

    @stage(outs=["data/raw.txt"])
    def produce():
        print("hello from print")
        sys.stdout.flush()
        os.write(1, b"hello from fd 1\\n")
        subprocess.run(["echo", "hello from a child"], check=True)
        Path("data").mkdir(exist_ok=True)
        Path("data/raw.txt").write_text("raw")

    @stage(deps=["data/raw.txt"], outs=["out"])
    def fan_out(params):
        Path("out/sub").mkdir(parents=True, exist_ok=True)
        for name in params["names"]:
            Path("out/sub", name).write_text(name)

    @stage(deps=["data/raw.txt"])
    def explode():
        raise ValueError("no good")

    @stage(deps=["data/raw.txt"], outs=["never.txt"])
    def lazy():
        pass

    @stage(deps=["missing.csv"])
    def needs_input():
        pass

    @stage()
    def loud():
        print("x" * (OUTPUT_LIMIT + 100), end="")
        print("THE END")

    @stage()
    def chatty_a():
        BARRIER.wait(5)
        print("from a")

    @stage()
    def chatty_b():
        BARRIER.wait(5)
        print("from b")

    OUTPUT_LIMIT = 64 * 1024
    BARRIER = threading.Barrier(2)
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[LoadedPipeline]:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "params.toml").write_text('[fan_out]\nnames = ["a", "b"]\n')
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield load_pipeline(tmp_path, "pipeline.py", "params.toml")
    finally:
        os.chdir(previous)


def run(loaded: LoadedPipeline, stage: str, capture: CaptureMode = "fd") -> StageOutcome:
    return execute_stage(loaded, stage, 7, None, loaded.project_root, capture=capture)


def run_like_a_worker(
    capsys: pytest.CaptureFixture[str], loaded: LoadedPipeline, stage: str, capture: CaptureMode
) -> StageOutcome:
    """Run with the process's real fds and a ``sys.stdout`` writing to fd 1, as a worker has.

    pytest's own capture would otherwise take ``print`` before it ever reaches fd 1.
    (It is resumed before each test's call phase, so a fixture cannot do this.)
    """
    with capsys.disabled():
        return run(loaded, stage, capture)


def test_output_of_print_fd_writes_and_child_processes_is_captured(
    project: LoadedPipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_like_a_worker(capsys, project, "produce", "fd")
    assert outcome.status == "ok", outcome.error
    assert outcome.output.splitlines() == [
        "hello from print",
        "hello from fd 1",
        "hello from a child",
    ]
    assert (outcome.stage, outcome.generation, outcome.pid) == ("produce", 7, os.getpid())
    assert outcome.duration_ms > 0


def test_out_signatures_cover_every_file_under_a_directory_output(
    project: LoadedPipeline,
) -> None:
    assert run(project, "produce").status == "ok"
    outcome = run(project, "fan_out")
    assert outcome.status == "ok", outcome.error
    assert set(outcome.out_signatures) == {"out/sub/a", "out/sub/b"}
    st = os.stat(project.project_root / "out/sub/a")
    assert outcome.out_signatures["out/sub/a"] == (st.st_mtime_ns, st.st_size, st.st_ino)


def test_params_given_by_the_supervisor_win_over_the_snapshot(project: LoadedPipeline) -> None:
    assert run(project, "produce").status == "ok"
    outcome = execute_stage(
        project, "fan_out", 7, {"names": ["z"]}, project.project_root, capture="fd"
    )
    assert set(outcome.out_signatures) == {"out/sub/z"}


def test_an_exception_fails_the_stage_with_error_and_traceback(project: LoadedPipeline) -> None:
    assert run(project, "produce").status == "ok"
    outcome = run(project, "explode")
    assert outcome.status == "failed"
    assert outcome.error == "ValueError: no good"
    assert outcome.traceback is not None
    assert 'raise ValueError("no good")' in outcome.traceback
    assert "_runner.py" not in outcome.traceback


def test_a_missing_dep_names_the_stage_that_should_have_produced_it(
    project: LoadedPipeline,
) -> None:
    outcome = run(project, "explode")
    assert outcome.status == "failed"
    assert outcome.error == (
        "dependency 'data/raw.txt' does not exist (stage 'produce' should have produced it)"
    )


def test_a_missing_external_dep_says_no_stage_produces_it(project: LoadedPipeline) -> None:
    outcome = run(project, "needs_input")
    assert outcome.error == "dependency 'missing.csv' does not exist (no stage produces it)"


def test_a_declared_output_not_written_fails_the_stage(project: LoadedPipeline) -> None:
    assert run(project, "produce").status == "ok"
    outcome = run(project, "lazy")
    assert outcome.status == "failed"
    assert outcome.error == "stage did not write its output 'never.txt'"


@pytest.mark.parametrize("capture", ["fd", "thread"])
def test_long_output_keeps_its_tail_and_says_it_was_truncated(
    project: LoadedPipeline, capture: CaptureMode, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = run_like_a_worker(capsys, project, "loud", capture)
    head = outcome.output[:200]
    assert head.startswith("[output truncated: showing the last 64 KiB of "), head
    assert outcome.output.endswith("THE END\n"), outcome.output[-200:]
    assert len(outcome.output) < OUTPUT_LIMIT + 200


def test_thread_capture_keeps_concurrent_stages_apart(
    project: LoadedPipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: dict[str, StageOutcome] = {}

    def worker(stage: str) -> None:
        outcomes[stage] = run(project, stage, "thread")

    threads = [threading.Thread(target=worker, args=(s,)) for s in ("chatty_a", "chatty_b")]
    for thread in threads:
        thread.start()
    print("from the main thread")
    for thread in threads:
        thread.join(10)
    assert outcomes["chatty_a"].output == "from a\n"
    assert outcomes["chatty_b"].output == "from b\n"
    sys.stdout.flush()
    assert "from the main thread" in capsys.readouterr().out
