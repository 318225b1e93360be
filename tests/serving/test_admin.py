"""The admin API's guard (token, loopback) and the settings that reach `ProxyServer`."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import admin_json, proxy_config

from rl_lb.cli import main
from rl_lb.errors import ConfigError
from serving.app import ProxyServer
from serving.config import KEYS, load_config

BACKEND = "http://127.0.0.1:8001"


def test_a_non_loopback_admin_address_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        load_config(flags={"backend": [BACKEND], "admin": "0.0.0.0:9090"})
    config = load_config(flags={"backend": [BACKEND], "admin": "0.0.0.0:9090", "admin-token": "t"})
    assert config.admin_address == ("0.0.0.0", 9090)
    assert load_config(flags={"backend": [BACKEND], "admin": "[::1]:9090"}).admin == "[::1]:9090"


async def test_with_a_token_every_admin_call_must_carry_it(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, admin_token="s3cret")) as proxy:
        calls = {
            (path, token): (await admin_json(client, proxy, "GET", path, token=token))[0]
            for path in ("/admin/state", "/admin/snapshot")
            for token in (None, "wrong", "s3cret")
        }
        weights, _ = await admin_json(client, proxy, "POST", "/admin/weights", [1.0])
    for (_, token), status in calls.items():
        assert status == (200 if token == "s3cret" else 401)
    assert weights == 401  # probes and /metrics: tests/serving/test_admin_api_details.py


def test_flags_override_the_file_whose_keys_mirror_them(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(
        f'backend = ["{BACKEND}/"]\ncontrol-interval = 0.5\nmax-in-flight = 7\n'
        'listen = "127.0.0.1:8181"\npreserve-host = false\n'
    )
    config = load_config(str(path), {"control-interval": 2.0, "listen": None})
    assert config.backends == (BACKEND,)
    assert config.control_interval_s == 2.0
    assert config.max_in_flight == 7
    assert config.listen_address == ("127.0.0.1", 8181)
    assert config.preserve_host is False
    assert config.config_path == str(path)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("backends = []", "backends"),
        (f'backend = ["{BACKEND}"]\ncontrol-interval = "soon"', "control-interval"),
        (f'backend = ["{BACKEND}"]\nmax-in-flight = 2.5', "max-in-flight"),
        (f'backend = ["{BACKEND}"]\nretries = -1', "retries"),
        ('backend = ["ftp://x"]', "backend"),
        (f'backend = ["{BACKEND}", "{BACKEND}/"]', "backend"),
        (f'backend = ["{BACKEND}"]\nlisten = "8080"', "listen"),
        (f'backend = ["{BACKEND}"]\nhealth-path = "health"', "health-path"),
        (f'backend = ["{BACKEND}"]\nworkers = 2\nlisten = "127.0.0.1:0"', "workers"),
        (f'backend = ["{BACKEND}"]\nbalancer = "jsq"\npolicy = "m.npz"', "policy"),
        (f'backend = ["{BACKEND}"]\nbalancer = ""', "balancer"),
        (f'backend = ["{BACKEND}"]\nlisten = ""', "listen"),
        (f'backend = ["{BACKEND}"]\nerror-penalty = 0', "error-penalty"),
        (f'backend = ["{BACKEND}"]\nunhealthy-threshold = 0', "unhealthy-threshold"),
        (f'backend = ["{BACKEND}"]\nbase-ejection = 400', "max-ejection"),
        ("backend = [", ""),
    ],
)
def test_a_bad_file_is_one_error_naming_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.where == f"{path}: {where}" if where else str(path)
    assert "\n" not in str(caught.value)


def test_the_cli_prints_a_config_error_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(f'backend = ["{BACKEND}"]\nretry-budget = "lots"\n')
    assert main(["serve", "--config", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"error: {path}: retry-budget: 'lots' is not a number"]
    assert main(["serve", "--backend", BACKEND, "--admin", "0.0.0.0:9999"]) == 2
    assert "needs a token" in capsys.readouterr().err


def test_every_setting_is_a_flag_and_documented(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no flag name cut short by the help's layout
    assert main(["serve", "--help"]) == 0
    help_text = capsys.readouterr().out
    doc = (Path(__file__).parents[2] / "docs" / "proxy.md").read_text()
    assert [key for key in KEYS if f"--{key}" not in help_text] == []
    assert [key for key in KEYS if f"{key} =" not in doc and f"`{key}`" not in doc] == []
