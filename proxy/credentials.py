"""Wiring of the credential addons: vault, OAuth refresher, assertion minter, bindings."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

from wardgate.gateway.assertion import AssertionMinter
from wardgate.gateway.audit_writer import AuditLog
from wardgate.gateway.bindings import Bindings
from wardgate.gateway.credentials import CredentialProvider
from wardgate.gateway.keys import KeyRing
from wardgate.gateway.oauth import OAuthRefresher
from wardgate.gateway.oauth_connect import OAuthConnector
from wardgate.gateway.settings import Settings
from wardgate.gateway.vault import KeySource, Vault

from .inject import CredentialBinding, CredentialInjector
from .scrub import ResponseScrubber, StreamScrubber
from .websocket_scrub import WebSocketScrubber


def upstream_ssl_context(settings: Settings) -> ssl.SSLContext:
    """The trust wardgate uses towards upstreams (system store plus ``proxy.upstream_ca_file``)."""
    context = ssl.create_default_context()
    if settings.proxy.upstream_ca_file is not None:
        context.load_verify_locations(cafile=str(settings.proxy.upstream_ca_file))
    return context


@dataclass(frozen=True, slots=True)
class CredentialParts:
    binding: CredentialBinding  # before EgressPolicy
    injector: CredentialInjector  # after EgressPolicy
    scrubber: ResponseScrubber  # before AuditTrail
    stream_scrubber: StreamScrubber  # last: after EventStreams has asked for streaming
    websocket_scrubber: WebSocketScrubber  # before AuditTrail (refuses an upgrade it cannot read)
    connector: OAuthConnector  # routes on the admin API


@contextlib.asynccontextmanager
async def build_credentials(
    settings: Settings, keys: KeyRing, audit: AuditLog, audit_timeout: float
) -> AsyncIterator[CredentialParts]:
    # The vault opens even without a master key: a credentialed call then fails closed with
    # vault_unavailable, while every other call keeps working.
    vault = Vault(settings.state_db, KeySource(settings)) if settings.services else None
    trust = upstream_ssl_context(settings)
    oauth = OAuthRefresher(vault, trust) if vault is not None else None
    provider = CredentialProvider(vault, oauth, AssertionMinter(keys, settings.identity.issuer))
    try:
        yield CredentialParts(
            CredentialBinding(Bindings(settings.services), audit, audit_timeout),
            CredentialInjector(provider, audit, audit_timeout),
            ResponseScrubber(audit, audit_timeout),
            StreamScrubber(),
            WebSocketScrubber(audit, audit_timeout),
            OAuthConnector(settings, vault, trust),
        )
    finally:
        if oauth is not None:
            await oauth.close()
        if vault is not None:
            vault.close()
