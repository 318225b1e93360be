"""Every settings file the product reads fails the same way: one line naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rl_lb.errors import ConfigError, RlLbError, ScenarioError
from rl_lb.scenarios import load_scenario
from serving.config import load_config as load_proxy_config
from training.config import load_config as load_training_config

READERS: dict[str, tuple[Callable[[Path], Any], type[RlLbError]]] = {
    "scenario": (load_scenario, ScenarioError),
    "proxy": (lambda path: load_proxy_config(str(path)), ConfigError),
    "training": (load_training_config, ConfigError),
}
BROKEN: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda d: d / "nope.toml", "file not found"),
    "directory": (lambda d: d, "is a directory"),
    "not utf-8": (lambda d: _write(d, b'name = "caf\xe9"\n'), "not UTF-8 text (byte 11)"),
    "bad syntax": (lambda d: _write(d, b"name = \n"), "invalid TOML"),
    "under a file": (lambda d: _write(d, b"") / "inner.toml", "cannot read it: Not a directory"),
}


def _write(folder: Path, content: bytes) -> Path:
    path = folder / "settings.toml"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_file_is_one_error_line(tmp_path: Path, reader: str, case: str) -> None:
    load, error_type = READERS[reader]
    make, message = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(error_type) as caught:
        load(path)
    assert caught.value.where == str(path)
    assert message in caught.value.what
    assert "\n" not in str(caught.value)
