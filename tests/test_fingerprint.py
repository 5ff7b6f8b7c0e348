"""Code fingerprints: what changes a stage's fingerprint, and what never does.

Every test writes a real project to a temporary directory, loads it with the real loader
(in this process, as ``--no-parallel`` does; the loader purges the previous project's
modules) and fingerprints the loaded stage functions.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Mapping
from pathlib import Path

from pivot_supervise.workers._fingerprint import (
    StageFingerprint,
    diff_parts,
    fingerprint_stages,
    params_digest,
)
from pivot_supervise.workers._loader import load_pipeline

HEADER = "from pivot_supervise.pipeline._stage import stage\n"


def fingerprint(root: Path, files: Mapping[str, str]) -> dict[str, StageFingerprint]:
    """Write ``files`` (dedented; the pipeline gets the ``stage`` import) and fingerprint."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        body = textwrap.dedent(text)
        path.write_text(HEADER + body if name == "pipeline.py" else body)
    loaded = load_pipeline(root, "pipeline.py", "params.toml")
    return fingerprint_stages(loaded.functions, root)


def codes(fps: Mapping[str, StageFingerprint]) -> dict[str, str]:
    return {name: fp.code for name, fp in fps.items()}


def changed_stages(before: Mapping[str, StageFingerprint], after: Mapping[str, StageFingerprint]):
    return {name for name in after if before[name].code != after[name].code}


PIPELINE = """
    import helpers

    @stage(outs=["a.txt"])
    def a():
        return helpers.shared(1)

    @stage(outs=["b.txt"])
    def b():
        return helpers.only_b() + helpers.shared(2)

    @stage(outs=["c.txt"])
    def c():
        return 3
"""

HELPERS = """
    THRESHOLD = 10

    def shared(x):
        return x + THRESHOLD

    def only_b():
        return 2

    def unrelated():
        return 4
"""


def test_comments_blank_lines_and_docstrings_do_not_change_a_fingerprint(tmp_path: Path) -> None:
    before = fingerprint(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    after = fingerprint(
        tmp_path,
        {
            "pipeline.py": """
                # a comment at the top
                import helpers


                @stage(outs=["a.txt"])
                def a():
                    '''Docstring added.'''
                    # comment inside
                    return helpers.shared(1)  # trailing comment

                @stage(outs=["b.txt"])
                def b():
                    \"\"\"A multi-line
                    docstring.\"\"\"

                    return helpers.only_b() + helpers.shared(2)

                @stage(outs=["c.txt"])
                def c():
                    "docstring"
                    return 3
            """,
            "helpers.py": '''
                """Module docstring."""
                THRESHOLD = 10  # the threshold

                def shared(x):
                    """Docstring of a function that had none."""
                    return x + THRESHOLD


                def only_b():

                    return 2

                def unrelated():
                    return 4
            ''',
        },
    )
    assert codes(after) == codes(before)
    assert after["a"].parts == before["a"].parts


def test_moving_a_function_within_its_file_does_not_change_a_fingerprint(tmp_path: Path) -> None:
    before = fingerprint(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    moved = "\n\n\n" + "\n".join(
        [
            "def unrelated():\n    return 4\n",
            "def only_b():\n    return 2\n",
            "def shared(x):\n    return x + THRESHOLD\n",
            "THRESHOLD = 10\n",
        ]
    )
    after = fingerprint(tmp_path, {"helpers.py": moved})
    assert codes(after) == codes(before)


def test_editing_a_stage_body_changes_only_that_stage(tmp_path: Path) -> None:
    before = fingerprint(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    after = fingerprint(tmp_path, {"pipeline.py": PIPELINE.replace("return 3", "return 4")})
    assert changed_stages(before, after) == {"c"}
    assert diff_parts(before["c"].parts, after["c"].parts) == (("pipeline:c",), (), ())


def test_editing_a_helper_changes_exactly_the_stages_that_reach_it(tmp_path: Path) -> None:
    before = fingerprint(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    after = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("return 2", "return 22")})
    assert changed_stages(before, after) == {"b"}
    assert diff_parts(before["b"].parts, after["b"].parts) == (("helpers:only_b",), (), ())


def test_editing_an_unrelated_function_changes_nothing(tmp_path: Path) -> None:
    before = fingerprint(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    after = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("return 4", "return 5")})
    assert changed_stages(before, after) == set()


def test_a_module_constant_is_part_of_the_stages_that_reach_it(tmp_path: Path) -> None:
    before = fingerprint(tmp_path, {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    assert "helpers:THRESHOLD" in before["a"].functions
    assert "helpers:THRESHOLD" not in before["c"].functions
    after = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("= 10", "= 11")})
    assert changed_stages(before, after) == {"a", "b"}
    assert diff_parts(before["a"].parts, after["a"].parts) == (("helpers:THRESHOLD",), (), ())


def test_fingerprints_list_project_code_only(tmp_path: Path) -> None:
    fps = fingerprint(
        tmp_path,
        {
            "pipeline.py": """
                import json
                import os.path
                from helpers import shared

                @stage(outs=["a.txt"])
                def a():
                    return json.dumps(os.path.join("x", "y")) + str(shared(1))
            """,
            "helpers.py": HELPERS,
        },
    )
    assert fps["a"].functions == ("helpers:THRESHOLD", "helpers:shared", "pipeline:a")
    assert fps["a"].functions == tuple(sorted(fps["a"].parts))


def test_default_arguments_count(tmp_path: Path) -> None:
    source = """
        @stage(outs=["a.txt"])
        def a(params=None, scale=2, *, offset=3):
            return scale + offset
    """
    before = fingerprint(tmp_path, {"pipeline.py": source})
    positional = fingerprint(tmp_path, {"pipeline.py": source.replace("scale=2", "scale=5")})
    keyword = fingerprint(tmp_path, {"pipeline.py": source.replace("offset=3", "offset=4")})
    assert len({before["a"].code, positional["a"].code, keyword["a"].code}) == 3


def test_a_default_argument_that_is_a_project_function_is_followed(tmp_path: Path) -> None:
    source = """
        import helpers

        @stage(outs=["a.txt"])
        def a(params=None, fn=helpers.only_b):
            return fn()
    """
    before = fingerprint(tmp_path, {"pipeline.py": source, "helpers.py": HELPERS})
    assert "helpers:only_b" in before["a"].functions
    after = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("return 2", "return 3")})
    assert changed_stages(before, after) == {"a"}


def test_a_closure_value_counts(tmp_path: Path) -> None:
    source = """
        import helpers

        def make(n):
            def step():
                return helpers.only_b() * n
            return step

        run_step = make(3)

        @stage(outs=["a.txt"])
        def a():
            return run_step()
    """
    before = fingerprint(tmp_path, {"pipeline.py": source, "helpers.py": HELPERS})
    assert "helpers:only_b" in before["a"].functions
    after = fingerprint(tmp_path, {"pipeline.py": source.replace("make(3)", "make(4)")})
    assert changed_stages(before, after) == {"a"}
    changed, _, _ = diff_parts(before["a"].parts, after["a"].parts)
    assert changed == ("pipeline:make.<locals>.step",)


def test_nested_code_lambdas_and_comprehensions_count(tmp_path: Path) -> None:
    source = """
        @stage(outs=["a.txt"])
        def a():
            f = lambda x: x + 1
            return [f(i) for i in range(3)]
    """
    before = fingerprint(tmp_path, {"pipeline.py": source})
    in_lambda = fingerprint(tmp_path, {"pipeline.py": source.replace("x + 1", "x + 2")})
    in_comp = fingerprint(tmp_path, {"pipeline.py": source.replace("range(3)", "range(4)")})
    assert len({before["a"].code, in_lambda["a"].code, in_comp["a"].code}) == 3


def test_two_functions_with_one_label_are_told_apart_by_content(tmp_path: Path) -> None:
    helpers = """
        first = lambda: 1
        second = lambda: 2
    """
    source = """
        import helpers

        @stage(outs=["both.txt"])
        def both():
            return helpers.first() + helpers.second()

        @stage(outs=["one.txt"])
        def one():
            return helpers.first()
    """
    before = fingerprint(tmp_path, {"pipeline.py": source, "helpers.py": helpers})
    lambdas = [name for name in before["both"].functions if name.startswith("helpers:")]
    assert len(lambdas) == 2
    assert all(name.startswith("helpers:<lambda>#") for name in lambdas)
    assert "helpers:<lambda>" in before["one"].functions  # one lambda: nothing to tell apart
    after = fingerprint(tmp_path, {"helpers.py": helpers.replace("lambda: 2", "lambda: 3")})
    assert changed_stages(before, after) == {"both"}


def test_a_helper_reached_from_a_lambda_or_comprehension_is_followed(tmp_path: Path) -> None:
    source = """
        import helpers

        @stage(outs=["a.txt"])
        def a():
            return [helpers.only_b() for _ in range(2)], (lambda: helpers.shared(1))
    """
    fps = fingerprint(tmp_path, {"pipeline.py": source, "helpers.py": HELPERS})
    assert {"helpers:only_b", "helpers:shared", "helpers:THRESHOLD"} <= set(fps["a"].functions)


def test_a_project_base_class_method_counts(tmp_path: Path) -> None:
    models = """
        class Base:
            def scale(self):
                return 2

        class Model(Base):
            def fit(self):
                return self.scale()
    """
    pipeline = """
        from models import Model

        @stage(outs=["a.txt"])
        def a():
            return Model().fit()

        @stage(outs=["b.txt"])
        def b():
            return 0
    """
    before = fingerprint(tmp_path, {"pipeline.py": pipeline, "models.py": models})
    assert {"models:Base", "models:Base.scale", "models:Model", "models:Model.fit"} <= set(
        before["a"].functions
    )
    after = fingerprint(tmp_path, {"models.py": models.replace("return 2", "return 3")})
    assert changed_stages(before, after) == {"a"}
    assert diff_parts(before["a"].parts, after["a"].parts)[0] == ("models:Base.scale",)


def test_a_stage_decorated_with_functools_wraps_keeps_its_references(tmp_path: Path) -> None:
    pipeline = """
        import functools
        import helpers

        def logged(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                return func(*args, **kwargs)
            return wrapper

        @stage(outs=["a.txt"])
        @logged
        def a():
            return helpers.only_b()

        @stage(outs=["b.txt"])
        @logged
        def b():
            return helpers.shared(1)
    """
    before = fingerprint(tmp_path, {"pipeline.py": pipeline, "helpers.py": HELPERS})
    assert "pipeline:a" in before["a"].functions
    assert "helpers:only_b" in before["a"].functions
    assert "helpers:shared" not in before["a"].functions
    assert before["a"].code != before["b"].code
    after = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("return 2", "return 7")})
    assert changed_stages(before, after) == {"a"}


def test_mutual_recursion_is_followed_both_ways(tmp_path: Path) -> None:
    helpers = """
        def even(n):
            return True if n == 0 else odd(n - 1)

        def odd(n):
            return False if n == 0 else even(n - 1)
    """
    pipeline = """
        from helpers import even

        @stage(outs=["a.txt"])
        def a():
            return even(4)
    """
    before = fingerprint(tmp_path, {"pipeline.py": pipeline, "helpers.py": helpers})
    assert {"helpers:even", "helpers:odd"} <= set(before["a"].functions)
    after = fingerprint(tmp_path, {"helpers.py": helpers.replace("False if", "bool(0) if")})
    assert changed_stages(before, after) == {"a"}


def test_functools_partial_is_followed(tmp_path: Path) -> None:
    pipeline = """
        import functools
        import helpers

        add_five = functools.partial(helpers.shared, 5)

        @stage(outs=["a.txt"])
        def a():
            return add_five()
    """
    before = fingerprint(tmp_path, {"pipeline.py": pipeline, "helpers.py": HELPERS})
    assert {"pipeline:add_five", "helpers:shared"} <= set(before["a"].functions)
    argument = fingerprint(tmp_path, {"pipeline.py": pipeline.replace("shared, 5", "shared, 6")})
    assert changed_stages(before, argument) == {"a"}
    target = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("x + T", "x - T")})
    assert changed_stages(argument, target) == {"a"}


def test_an_import_inside_the_stage_is_followed(tmp_path: Path) -> None:
    pipeline = """
        import helpers  # imported, so it is in sys.modules when we fingerprint

        @stage(outs=["a.txt"])
        def a():
            from helpers import only_b
            return only_b()

        @stage(outs=["b.txt"])
        def b():
            import lazy
            return lazy.VALUE
    """
    files = {"pipeline.py": pipeline, "helpers.py": HELPERS, "lazy.py": "VALUE = 1\n"}
    before = fingerprint(tmp_path, files)
    assert "helpers:only_b" in before["a"].functions
    edited = fingerprint(tmp_path, {"helpers.py": HELPERS.replace("return 2", "return 8")})
    assert changed_stages(before, edited) == {"a"}
    # ``lazy`` is not imported when the pipeline loads: its source stands in for it.
    lazy = fingerprint(tmp_path, {"lazy.py": "VALUE = 2\n"})
    assert changed_stages(edited, lazy) == {"b"}


def test_set_literals_and_set_constants_are_serialised_in_sorted_order(tmp_path: Path) -> None:
    one = fingerprint(
        tmp_path,
        {
            "pipeline.py": """
                NAMES = {"delta", "alpha", "charlie", "bravo"}

                @stage(outs=["a.txt"])
                def a():
                    return "x" in {"q", "r", "s", "t"} or NAMES
            """
        },
    )
    two = fingerprint(
        tmp_path,
        {
            "pipeline.py": """
                NAMES = {"alpha", "bravo", "charlie", "delta"}

                @stage(outs=["a.txt"])
                def a():
                    return "x" in {"t", "s", "r", "q"} or NAMES
            """
        },
    )
    assert one["a"].code == two["a"].code


def test_fingerprints_are_the_same_on_a_second_load(tmp_path: Path) -> None:
    files = {"pipeline.py": PIPELINE, "helpers.py": HELPERS}
    assert fingerprint(tmp_path, files) == fingerprint(tmp_path, files)


def test_params_digest_is_canonical() -> None:
    assert params_digest({"a": 1, "b": [1, 2]}) == params_digest({"b": [1, 2], "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 2})
    assert params_digest(None) != params_digest({})
    day = dt.date(2024, 1, 2)
    assert params_digest({"d": day}) == params_digest({"d": dt.date(2024, 1, 2)})
    assert params_digest({"d": day}) != params_digest({"d": "2024-01-02"})
    stamp = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert params_digest({"t": stamp}) != params_digest({"t": stamp.replace(second=6)})
    assert len(params_digest({"x": {"y": 1.5}})) == 64
