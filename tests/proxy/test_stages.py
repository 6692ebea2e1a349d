"""Bench-only stage switches: off by default, and each named stage leaves the chain as documented."""

from __future__ import annotations

import pytest

from wardgate.gateway.errors import ConfigError
from wardgate.gateway.settings import Settings, load_settings
from wardgate.proxy import stages
from wardgate.proxy.audit_trail import AuditTrail
from wardgate.proxy.auth import ProxyAuth
from wardgate.proxy.egress import EgressPolicy
from wardgate.proxy.inject import CredentialBinding, CredentialInjector
from wardgate.proxy.intent import IntentRecord
from wardgate.proxy.scrub import ResponseScrubber, StreamScrubber

CHAIN_TYPES = [ProxyAuth, CredentialBinding, EgressPolicy, IntentRecord, CredentialInjector, ResponseScrubber,
               AuditTrail, StreamScrubber]


def chain() -> list[object]:
    return [object.__new__(cls) for cls in CHAIN_TYPES]


def test_default_settings_skip_nothing() -> None:
    assert Settings().bench.unsafe_skip_stages == []
    original = chain()
    assert stages.apply(Settings().bench.unsafe_skip_stages, original) is original


@pytest.mark.parametrize(
    ("skipped", "expected"),
    [
        (["identity"], [stages.UnverifiedIdentity, CredentialBinding, EgressPolicy, IntentRecord, CredentialInjector,
                        ResponseScrubber, AuditTrail, StreamScrubber]),
        (["policy"], [ProxyAuth, CredentialBinding, stages.AllowWithoutPolicy, IntentRecord, CredentialInjector,
                      ResponseScrubber, AuditTrail, StreamScrubber]),
        (["injection"], [ProxyAuth, EgressPolicy, IntentRecord, ResponseScrubber, AuditTrail, StreamScrubber]),
        (["audit"], [ProxyAuth, CredentialBinding, EgressPolicy, stages.ForwardUnrecorded, CredentialInjector,
                     ResponseScrubber, StreamScrubber]),
        (["scrubbing"], [ProxyAuth, CredentialBinding, EgressPolicy, IntentRecord, CredentialInjector, AuditTrail]),
    ],
)
def test_each_stage_switch(skipped: list[str], expected: list[type]) -> None:
    assert [type(a) for a in stages.apply(skipped, chain())] == expected


def test_unknown_stage_is_refused(tmp_path) -> None:
    config = tmp_path / "wardgate.toml"
    config.write_text('version = 1\n[bench]\nunsafe_skip_stages = ["identiy"]\n')
    with pytest.raises(ConfigError):
        load_settings(config_file=config, environ={}, cwd=tmp_path)
