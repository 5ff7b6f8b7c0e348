"""Loading a user's pipeline: the snapshot it yields, and the one-line errors it raises.

These load in the test process itself (as the ``--no-parallel`` mode does); every
project lives in its own temporary directory.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from conftest import python_json
from pivot_supervise.workers._loader import PipelineLoadError, load_pipeline

HEADER = "from pivot_supervise.pipeline._stage import stage\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def load(root: Path, pipeline: str = "pipeline.py"):
    return load_pipeline(root, pipeline, "params.toml")


def load_error(root: Path, pipeline: str = "pipeline.py") -> PipelineLoadError:
    with pytest.raises(PipelineLoadError) as info:
        load(root, pipeline)
    return info.value


GOOD = HEADER + textwrap.dedent(
    """
    import helpers

    @stage(deps=["data/raw.csv"], outs=["data/clean.csv"])
    def clean(params):
        helpers.copy("data/raw.csv", "data/clean.csv")

    @stage(deps=["./data/clean.csv"], outs=["reports/"])
    def report():
        pass

    @stage(deps=["data/clean.csv"], outs=["model.txt"])
    def train(params=None):
        pass
    """
)


def test_a_pipeline_loads_in_topological_order_with_params_and_warnings(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": GOOD,
            "helpers.py": "import shutil\ncopy = shutil.copyfile\n",
            "params.toml": "[train]\nepochs = 3\n",
        },
    )
    loaded = load(tmp_path)
    snapshot = loaded.snapshot
    assert snapshot.names == ("clean", "report", "train")
    assert snapshot["clean"].params == {}
    assert snapshot["train"].params == {"epochs": 3}
    assert snapshot["report"].params is None
    assert snapshot["report"].deps == ("data/clean.csv",)
    assert snapshot["report"].outs == ("reports",)
    assert snapshot["clean"].module == "pipeline"
    assert snapshot.warnings == (
        "stage 'clean' depends on 'data/raw.csv', which no stage produces "
        "and which does not exist yet",
    )
    assert set(loaded.functions) == {"clean", "report", "train"}
    assert len(snapshot.code_digest) == 64


def test_an_existing_external_dep_gives_no_warning(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": GOOD, "helpers.py": "copy = None\n", "data/raw.csv": "x\n"})
    assert load(tmp_path).snapshot.warnings == ()


def test_the_code_digest_follows_the_source_of_imported_project_modules(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": GOOD, "helpers.py": "copy = None\n"})
    first = load(tmp_path).snapshot.code_digest
    assert load(tmp_path).snapshot.code_digest == first
    write(tmp_path, {"helpers.py": "copy = 1234\n"})
    assert load(tmp_path).snapshot.code_digest != first


def test_reloading_in_one_process_sees_the_edited_code(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": HEADER + "@stage()\ndef one():\n    pass\n"})
    assert load(tmp_path).snapshot.names == ("one",)
    write(tmp_path, {"pipeline.py": HEADER + "@stage()\ndef two():\n    pass\n"})
    assert load(tmp_path).snapshot.names == ("two",)


def test_a_pipeline_in_a_subdirectory_is_imported_by_its_dotted_name(tmp_path: Path) -> None:
    write(tmp_path, {"pipelines/main.py": HEADER + "@stage()\ndef only():\n    pass\n"})
    snapshot = load(tmp_path, "pipelines/main.py").snapshot
    assert snapshot["only"].module == "pipelines.main"


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": HEADER + "\ndef broken(:\n    pass\n"})
    error = load_error(tmp_path)
    assert error.message.startswith("SyntaxError in pipeline.py line 3: ")
    assert "def broken(:" in error.traceback


def test_an_import_error_names_the_missing_module_and_the_line(tmp_path: Path) -> None:
    write(tmp_path, {"pipeline.py": HEADER + "import no_such_module_here\n"})
    error = load_error(tmp_path)
    assert error.message == (
        "ModuleNotFoundError in pipeline.py line 2: No module named 'no_such_module_here'"
    )


def test_an_exception_at_import_names_the_innermost_project_frame(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pipeline.py": HEADER + "import settings\n",
            "settings.py": "def boom():\n    raise ValueError('bad setting')\n\nboom()\n",
        },
    )
    error = load_error(tmp_path)
    assert error.message == "ValueError in settings.py line 2: bad setting"
    # Only project frames: importlib's machinery is noise to the user.
    assert "importlib" not in error.traceback
    assert 'settings.py", line 4' in error.traceback


def test_a_cycle_is_refused_naming_the_stages(tmp_path: Path) -> None:
    pipeline = HEADER + textwrap.dedent(
        """
        @stage(deps=["b.txt"], outs=["a.txt"])
        def make_a():
            pass

        @stage(deps=["a.txt"], outs=["b.txt"])
        def make_b():
            pass
        """
    )
    write(tmp_path, {"pipeline.py": pipeline})
    error = load_error(tmp_path)
    assert error.message.startswith("dependency cycle: make_a -> make_b -> make_a")


def test_a_params_entry_that_is_not_a_table_names_stage_and_file(tmp_path: Path) -> None:
    pipeline = HEADER + "@stage()\ndef train(params):\n    pass\n"
    write(tmp_path, {"pipeline.py": pipeline, "params.toml": "train = 3\n"})
    error = load_error(tmp_path)
    assert "stage 'train'" in error.message
    assert "'params.toml'" in error.message
    assert "not a table" in error.message


def test_invalid_toml_names_the_params_file(tmp_path: Path) -> None:
    pipeline = HEADER + "@stage()\ndef train(params):\n    pass\n"
    write(tmp_path, {"pipeline.py": pipeline, "params.toml": "[train\n"})
    error = load_error(tmp_path)
    assert error.message.startswith("params file 'params.toml' is not valid TOML")
    # A mistake in the project said in our words: the parser's frames are noise.
    assert error.traceback == ""


def test_whether_a_stage_takes_params_looks_through_decorators(tmp_path: Path) -> None:
    pipeline = HEADER + textwrap.dedent(
        """
        import functools

        def logged(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return func(*args, **kwargs)
            return wrapper

        @stage()
        @logged
        def train(params):
            pass

        @stage()
        @logged
        def plain():
            pass

        @stage()
        def bare():
            pass

        @stage()
        def open_ended(*args, **kwargs):
            pass
        """
    )
    write(tmp_path, {"pipeline.py": pipeline, "params.toml": "[train]\nlr = 0.1\n"})
    snapshot = load(tmp_path).snapshot
    assert snapshot["train"].params == {"lr": 0.1}
    assert snapshot["plain"].params is None
    assert snapshot["bare"].params is None
    assert snapshot["open_ended"].params is None


def test_a_stage_requiring_other_arguments_is_refused(tmp_path: Path) -> None:
    pipeline = HEADER + "@stage()\ndef train(params, seed):\n    pass\n"
    write(tmp_path, {"pipeline.py": pipeline})
    error = load_error(tmp_path)
    assert "stage 'train'" in error.message
    assert "'seed'" in error.message


def test_a_missing_pipeline_file_is_a_load_error(tmp_path: Path) -> None:
    assert load_error(tmp_path).message == "pipeline file 'pipeline.py' does not exist"


#: Loads the project of ``argv[1]`` in a fresh interpreter, freezing the heap or not
#: (``argv[2]``), and says what the garbage collector looks like afterwards.
FREEZE_CHILD = """
import gc, json, sys
from pathlib import Path
from pivot_supervise.workers._loader import load_pipeline
loaded = load_pipeline(Path(sys.argv[1]), "pipeline.py", "params.toml",
                       freeze_heap=sys.argv[2] == "freeze")
codes = [spec.code_fingerprint for spec in loaded.snapshot.stages]
print(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
                  "fingerprinted": all(codes)}))
"""


@pytest.mark.parametrize("freeze", [True, False], ids=["freeze_heap", "default"])
def test_a_load_may_freeze_the_heap_and_always_leaves_collections_on(
    tmp_path: Path, freeze: bool
) -> None:
    """A worker's load freezes the heap as soon as the stages are fingerprinted, before
    collections resume; any other load leaves the heap alone.  Both leave the garbage
    collector on, and the stages fingerprinted."""
    write(tmp_path, {"pipeline.py": GOOD, "helpers.py": "def copy(a, b):\n    pass\n"})
    found = python_json(FREEZE_CHILD, str(tmp_path), "freeze" if freeze else "no")
    assert found["enabled"] and found["fingerprinted"]
    assert (found["frozen"] > 0) == freeze
