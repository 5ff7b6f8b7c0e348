"""The ``preload`` setting: third-party modules every worker imports when it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pivot_supervise._config import ConfigError, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_preload_defaults_to_nothing(tmp_path: Path) -> None:
    assert load_config(tmp_path).preload == ()


def test_preload_is_read_from_pyproject_and_from_our_own_file(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[tool.pivot-supervise]\npreload = ["numpy", "a.b_c"]\n')
    assert load_config(tmp_path).preload == ("numpy", "a.b_c")

    other = tmp_path / "other"
    other.mkdir()
    write(other / "pivot-supervise.toml", "preload = []\n")
    assert load_config(other).preload == ()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('"numpy"', "'numpy'"),
        ("[1]", "1"),
        ('["numpy", ""]', "''"),
        ('["numpy-stubs"]', "'numpy-stubs'"),
        ('["a..b"]', "'a..b'"),
        ('["./local"]', "'./local'"),
    ],
)
def test_a_bad_preload_is_an_error_naming_the_file_the_key_and_the_value(
    tmp_path: Path, value: str, named: str
) -> None:
    own = write(tmp_path / "pivot-supervise.toml", f"preload = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    message = str(caught.value)
    assert str(own) in message
    assert "preload" in message
    assert named in message
    assert "module names" in message
