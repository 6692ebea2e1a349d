from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.gateway.errors import ConfigError
from wardgate.gateway.settings import load_settings, parse_duration, parse_listen


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("500ms", 0.5), ("2h", 7200.0), ("30", 30.0), ("1.5s", 1.5), (7, 7.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "fast", "10 parsecs", "-3s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("localhost:9", ("localhost", 9))],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:99999", "host:http"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings.proxy.listen.address == "127.0.0.1:8080"
    assert settings.admin.listen.address == "127.0.0.1:8081"
    assert settings.home == tmp_path / ".wardgate"
    assert settings.opa.paths == [tmp_path / "policies"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[proxy]\nlisen = 1\n", "unknown setting proxy.'lisen' (did you mean 'listen'?)"),
        ("[opa]\ntimeuot = '1s'\n", "did you mean 'timeout'?"),
        ("[proxxy]\n", "did you mean 'proxy'?"),
        ("[proxy.listen]\nprot = 1\n", "proxy.listen.'prot' (did you mean 'port'?)"),
        ("wholly_unknown = 1\n", "unknown setting 'wholly_unknown'"),
    ],
)
def test_unknown_keys_are_refused_with_a_hint(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "wardgate.toml").write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert message in caught.value.message
    assert caught.value.code == "config_unknown_key"


def test_invalid_values_and_syntax_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "wardgate.toml").write_text("[opa]\nmode = 'sometimes'\n")
    with pytest.raises(ConfigError, match="opa.mode"):
        load_settings(environ={}, cwd=tmp_path)
    (tmp_path / "wardgate.toml").write_text("[opa\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert caught.value.code == "config_syntax"


@pytest.mark.parametrize("url", ["127.0.0.1:8181", "ftp://opa:8181", "http://", "http://opa:port", "unix://opa.sock", "unix://"])
def test_an_opa_address_wardgate_cannot_reach_is_refused_at_load(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": url}, cwd=tmp_path)
    assert caught.value.code == "config_invalid" and "opa.url" in caught.value.message
    assert repr(url) in caught.value.message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8181", "https://opa.internal", "unix:///run/opa/opa.sock"])
def test_opa_addresses_wardgate_can_reach(tmp_path: Path, url: str) -> None:
    assert load_settings(environ={"WARDGATE_OPA__MODE": "external", "WARDGATE_OPA__URL": url}, cwd=tmp_path).opa.url == url


def test_precedence_overrides_over_env_over_file(tmp_path: Path) -> None:
    (tmp_path / "wardgate.toml").write_text("[proxy.listen]\nport = 1111\n[admin.listen]\nport = 2222\n[opa]\ntimeout = '2s'\n")
    env = {"WARDGATE_ADMIN__LISTEN__PORT": "3333", "WARDGATE_OPA__TIMEOUT": "250ms"}
    settings = load_settings(environ=env, cwd=tmp_path, overrides={"admin_listen": "127.0.0.2:4444"})
    assert settings.proxy.listen.port == 1111
    assert (settings.admin.listen.host, settings.admin.listen.port) == ("127.0.0.2", 4444)
    assert settings.opa.timeout == 0.25


def test_unknown_environment_variables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'opa'"):
        load_settings(environ={"WARDGATE_OAP__TIMEOUT": "1s"}, cwd=tmp_path)


def test_paths_in_the_file_resolve_against_its_folder(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "wardgate.toml"
    conf.parent.mkdir()
    conf.write_text("[opa]\npaths = ['rego']\n")
    settings = load_settings(config_file=conf, environ={"WARDGATE_HOME": "state"}, cwd=tmp_path)
    assert settings.opa.paths == [tmp_path / "etc" / "rego"]
    assert settings.home == tmp_path / "state"


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=tmp_path / "nope.toml", environ={}, cwd=tmp_path)
    assert caught.value.code == "config_not_found"


def test_time_limits_default_and_accept_durations(tmp_path: Path) -> None:
    limits = load_settings(environ={}, cwd=tmp_path).limits
    assert (limits.connect_timeout, limits.body_timeout) == (10.0, 60.0)
    (tmp_path / "wardgate.toml").write_text("[limits]\nconnect_timeout = '750ms'\nbody_timeout = '2m'\n")
    limits = load_settings(environ={}, cwd=tmp_path).limits
    assert (limits.connect_timeout, limits.body_timeout) == (0.75, 120.0)
    assert load_settings(environ={"WARDGATE_LIMITS__CONNECT_TIMEOUT": "3s"}, cwd=tmp_path).limits.connect_timeout == 3.0


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("connect_timeout = 0", "limits.connect_timeout"),
        ("connect_timeout = -1", "limits.connect_timeout"),
        ("connect_timeout = '10 minutes'", "limits.connect_timeout: Value error, not a duration"),
        ("connect_timeout = '1h'", "limits.connect_timeout"),  # above the 300 s cap
        ("body_timeout = 0", "limits.body_timeout"),
        ("body_timeout = 'slow'", "limits.body_timeout: Value error, not a duration"),
        ("body_timeout = '2h'", "limits.body_timeout"),
        ("conect_timeout = '1s'", "did you mean 'connect_timeout'?"),
    ],
)
def test_bad_time_limits_are_refused_with_the_key_named(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "wardgate.toml").write_text(f"[limits]\n{toml}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert message in caught.value.message
