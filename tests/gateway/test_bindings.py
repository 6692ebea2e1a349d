"""Service bindings: which destination may receive which credential, and the [services] config."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.gateway.bindings import Bindings, host_matches, markers_in
from wardgate.gateway.errors import ConfigError
from wardgate.gateway.settings import ServiceSettings, load_settings


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("api.github.com", "api.github.com", True),
        ("api.github.com", "API.GitHub.com.", True),
        ("api.github.com", "evil-api.github.com", False),
        ("api.github.com", "api.github.com.evil.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),  # never the apex
        ("*.example.com", "badexample.com", False),
        ("*.example.com", ".example.com", False),
    ],
)
def test_host_patterns(pattern: str, host: str, matches: bool) -> None:
    assert host_matches(pattern, host) is matches


BINDINGS = Bindings({
    "github": ServiceSettings(hosts=["api.github.com"]),
    "corp": ServiceSettings(hosts=["*.corp.test"], ports=[443, 8443]),
})


@pytest.mark.parametrize(
    ("scheme", "host", "port", "expected"),
    [
        ("https", "api.github.com", 443, "github"),
        ("http", "api.github.com", 80, None),     # never over plain HTTP
        ("http", "api.github.com", 443, None),
        ("https", "api.github.com", 8443, None),  # not one of its ports
        ("https", "github.com", 443, None),
        ("https", "x.corp.test", 8443, "corp"),
        ("https", "corp.test", 443, None),
    ],
)
def test_resolve(scheme: str, host: str, port: int, expected: str | None) -> None:
    binding = BINDINGS.resolve(scheme, host, port)
    assert (binding.name if binding else None) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [("Bearer wardgate:github", {"github"}), ("token wardgate:a.b wardgate:c", {"a.b", "c"}), ("Bearer abc", set())],
)
def test_markers(text: str, names: set[str]) -> None:
    assert markers_in(text) == names


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[services.gh]\nhostz = ["a.com"]\nhosts = ["a.com"]', "did you mean 'hosts'"),
        ('[services.gh]\nhosts = ["a.com"]\nmechanism = "query"', "needs query_param"),
        ('[services.gh]\nhosts = ["a.com"]\ntemplate = "Bearer"', "{token}"),
        ('[services.gh]\nhosts = ["a.*.com"]', "must be a name"),
        ('[services.gh]\nhosts = []', "hosts"),
        ('[services.gh]\nhosts = ["a.com"]\nports = [0]', "ports"),
        ('[services.GH]\nhosts = ["a.com"]', "service name"),
        ('[services.gh]\nhosts = ["a.com"]\nmechanism = "assertion"\nmode = "placeholder"', "placeholder"),
    ],
)
def test_bad_service_config_is_refused(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "wardgate.toml").write_text("version = 1\n" + toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, cwd=tmp_path)
    assert message in caught.value.message


def test_service_defaults_are_https_443(tmp_path: Path) -> None:
    (tmp_path / "wardgate.toml").write_text('version = 1\n[services.gh]\nhosts = ["API.github.com"]\n')
    service = load_settings(environ={}, cwd=tmp_path).services["gh"]
    assert (service.hosts, service.ports, service.mechanism, service.template) == (
        ["api.github.com"], [443], "header", "Bearer {token}")
