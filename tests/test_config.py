"""Loading ``[tool.pivot-supervise]`` / ``pivot-supervise.toml``: values and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivot_supervise._config import Config, ConfigError, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_without_any_config_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)
    assert config == Config(project_root=tmp_path.resolve())
    assert config.pipeline == "pipeline.py"
    assert config.params == "params.toml"
    assert config.debounce_ms == 50
    assert config.max_workers is None
    assert config.source is None


def test_a_pyproject_without_our_table_leaves_the_defaults(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.ruff]\nline-length = 90\n')
    assert load_config(tmp_path).source is None


def test_settings_are_read_from_pyproject(tmp_path: Path) -> None:
    pyproject = write(
        tmp_path / "pyproject.toml",
        """
[tool.pivot-supervise]
pipeline = "flows/main.py"
params = "conf/params.toml"
watch = ["conf/*.yaml"]
ignore = ["scratch", "*.log"]
max-workers = 3
debounce_ms = 200
""",
    )
    config = load_config(tmp_path)
    assert config.pipeline == "flows/main.py"
    assert config.params == "conf/params.toml"
    assert config.watch == ("conf/*.yaml",)
    assert config.ignore == ("scratch", "*.log")
    assert config.max_workers == 3
    assert config.debounce_ms == 200
    assert config.source == pyproject.resolve()


def test_settings_are_read_from_the_top_level_of_our_own_file(tmp_path: Path) -> None:
    own = write(tmp_path / "pivot-supervise.toml", "max_workers = 2\ndebounce-ms = 0\n")
    config = load_config(tmp_path)
    assert (config.max_workers, config.debounce_ms) == (2, 0)
    assert config.source == own.resolve()


def test_pipeline_and_params_paths_are_normalised(tmp_path: Path) -> None:
    write(tmp_path / "pivot-supervise.toml", 'pipeline = "./flows//main.py"\n')
    assert load_config(tmp_path).pipeline == "flows/main.py"


def test_settings_in_both_files_are_refused_naming_both(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.pivot-supervise]\nmax_workers = 2\n")
    write(tmp_path / "pivot-supervise.toml", "max_workers = 3\n")
    with pytest.raises(ConfigError, match=r"two places") as info:
        load_config(tmp_path)
    assert "pyproject.toml" in str(info.value)
    assert "pivot-supervise.toml" in str(info.value)


def test_an_unknown_key_is_refused_naming_it_the_file_and_the_valid_keys(tmp_path: Path) -> None:
    write(tmp_path / "pivot-supervise.toml", 'ignores = ["*.log"]\n')
    with pytest.raises(ConfigError, match=r"unknown setting 'ignores'") as info:
        load_config(tmp_path)
    message = str(info.value)
    assert "pivot-supervise.toml" in message
    for key in ("pipeline", "params", "watch", "ignore", "max_workers", "debounce_ms"):
        assert key in message


def test_only_the_documented_dashed_spellings_are_accepted(tmp_path: Path) -> None:
    write(tmp_path / "pivot-supervise.toml", "de-bounce_ms = 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'de-bounce_ms'"):
        load_config(tmp_path)


def test_one_setting_given_in_both_spellings_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "pivot-supervise.toml", "max_workers = 2\nmax-workers = 3\n")
    with pytest.raises(ConfigError, match=r"'max_workers' is set twice"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("max_workers = 0", "max_workers", "at least 1"),
        ("max_workers = true", "max_workers", "at least 1"),
        ('max_workers = "2"', "max_workers", "at least 1"),
        ("max-workers = 1.5", "max-workers", "at least 1"),
        ("debounce_ms = -1", "debounce_ms", "0 to 10000"),
        ("debounce_ms = 10001", "debounce_ms", "0 to 10000"),
        ("debounce_ms = false", "debounce_ms", "0 to 10000"),
        ('watch = "*.yaml"', "watch", "list of glob strings"),
        ("ignore = [1]", "ignore", "list of glob strings"),
        ('pipeline = "pipeline.txt"', "pipeline", ".py file"),
        ("pipeline = 3", "pipeline", ".py file"),
        ('pipeline = "/abs/pipeline.py"', "pipeline", ".py file"),
        ('pipeline = "../pipeline.py"', "pipeline", ".py file"),
        ('params = ""', "params", "relative path"),
    ],
)
def test_a_bad_value_is_refused_naming_key_file_and_expectation(
    tmp_path: Path, line: str, key: str, expected: str
) -> None:
    write(tmp_path / "pivot-supervise.toml", line + "\n")
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(tmp_path)
    assert f"{key} = " in str(info.value)
    assert "pivot-supervise.toml" in str(info.value)


def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.pivot-supervise\n")
    with pytest.raises(ConfigError, match=r"pyproject\.toml is not valid TOML"):
        load_config(tmp_path)


def test_our_pyproject_entry_must_be_a_table(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool]\npivot-supervise = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[tool\.pivot-supervise\] must be a table"):
        load_config(tmp_path)


def test_a_missing_project_root_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=r"nowhere.*does not exist"):
        load_config(missing)


def test_overrides_replace_given_values_and_skip_none(tmp_path: Path) -> None:
    config = Config(project_root=tmp_path, max_workers=4)
    changed = config.with_overrides(max_workers=None, debounce_ms=10, pipeline="other.py")
    assert changed.max_workers == 4
    assert changed.debounce_ms == 10
    assert changed.pipeline == "other.py"
    assert config.debounce_ms == 50
