"""The credential a bound call carries: looked up (vault, OAuth refresh or a minted assertion),
rendered for its mechanism, and the forms of it the response scrubber must look for.

Refusals (all fail closed; the call is never forwarded without its credential):

    vault_unavailable          503  no master key, key file too open, unreadable or tampered row
    credential_missing         403  the user has no credential stored for the service
    credential_refresh_failed  502  the OAuth access token expired and could not be refreshed
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from .assertion import AssertionMinter
from .bindings import Binding
from .credential_cache import CredentialCache, Entry
from .errors import PolicyDenied
from .oauth import OAuthRefresher
from .vault import Vault, vault_unavailable

MIN_FORM = 4


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    user: str
    agent: str
    run: str | None
    call_id: str


class Injected:
    """What goes on the wire for one call, and what must never come back. Hidden from ``repr``.

    Immutable, so one rendering serves every call that carries the same credential."""

    __slots__ = ("service", "token", "header_value", "forms", "pattern")

    def __init__(self, service: str, token: str, header_value: str, forms: tuple[bytes, ...]) -> None:
        self.service = service
        self.token = token  # the value that replaces a placeholder marker or fills a query parameter
        self.header_value = header_value  # the full header value for header/basic/assertion mechanisms
        self.forms = forms
        # What the response scrubber searches for: any form, longest first.
        self.pattern = re.compile(b"|".join(re.escape(form) for form in forms))

    def first_at(self, data: bytes) -> int:
        """Where the first form in ``data`` starts, or -1: where ``pattern`` would first match, at
        a fraction of the cost. ``re`` tries every alternative at every byte (8-12 ms per MB
        here); a substring search per form takes 0.1 ms per MB each (bench/scrub.py)."""
        first = -1
        for form in self.forms:
            at = data.find(form, 0, first + len(form) - 1 if first >= 0 else len(data))
            if at >= 0:
                first = at
        return first

    def scrub(self, data: bytes, replacement: bytes) -> tuple[bytes, int]:
        """``data`` with every form replaced, and how many were; ``data`` itself when none occurs."""
        first = self.first_at(data)
        if first < 0:
            return data, 0
        cleaned, count = self.pattern.subn(replacement, data[first:])  # nothing matches before first
        return data[:first] + cleaned, count

    def __repr__(self) -> str:
        return f"Injected(service={self.service!r}, forms={len(self.forms)})"


def secret_forms(*values: str) -> tuple[bytes, ...]:
    """The plain value and the derived forms an upstream may echo: base64 (standard and URL-safe,
    with and without padding), URL-encoding, JSON string escaping. Longest first."""
    forms: set[bytes] = set()
    for value in values:
        raw = value.encode()
        b64 = base64.b64encode(raw)
        url_b64 = base64.urlsafe_b64encode(raw)
        for form in (
            raw, b64, b64.rstrip(b"="), url_b64, url_b64.rstrip(b"="),
            quote(value, safe="").encode(), quote_plus(value, safe="").encode(),
            json.dumps(value)[1:-1].encode(),
        ):
            if len(form) >= MIN_FORM:
                forms.add(form)
    return tuple(sorted(forms, key=lambda f: (-len(f), f)))


class CredentialProvider:
    """Credentials for bound calls. Vault reads are cached while the vault is unchanged
    (gateway/credential_cache.py); use it from the event loop thread only."""

    def __init__(
        self, vault: Vault | None, oauth: OAuthRefresher | None, assertions: AssertionMinter,
        cache: CredentialCache | None = None,
    ) -> None:
        self._vault = vault
        self._oauth = oauth
        self._assertions = assertions
        self._cache = cache if cache is not None else CredentialCache()

    async def _stored(self, vault: Vault, tenant: str, user: str, service: str) -> Entry:
        key = (tenant, user, service)
        version = vault.version()  # seen before the read below, so an entry is never newer than its tag
        if version is not None:
            entry = self._cache.lookup(version, key)
            if entry is not None:
                return entry
        entry = Entry(await asyncio.to_thread(vault.get, tenant, user, service))
        if version is not None:
            self._cache.store(version, key, entry)
        return entry

    def ready(self, binding: Binding, caller: Caller) -> Injected | None:
        """The credential for this call if it is already in memory for the vault as it is now and
        needs no waiting (a stored static secret rendered before); None: use :meth:`credential_for`.

        Lets the injector finish a call's ``request`` hook without a task (proxy/inline_hooks.py).
        Same answer as ``credential_for`` would give: same version check, same entry, same rendering.
        """
        if binding.service.mechanism == "assertion" or self._vault is None:
            return None
        version = self._vault.version()
        if version is None:
            return None
        entry = self._cache.lookup(version, (caller.tenant, caller.user, binding.name))
        if entry is None or entry.credential is None or entry.credential.kind == "oauth" or entry.rendered is None:
            return None
        return entry.rendered[1]

    async def credential_for(self, binding: Binding, caller: Caller) -> Injected:
        service = binding.service
        if service.mechanism == "assertion":
            token = self._assertions.mint(
                audience=service.audience or binding.name, user=caller.user, agent=caller.agent,
                tenant=caller.tenant, run=caller.run, call_id=caller.call_id, ttl=service.assertion_ttl,
            )
            return Injected(binding.name, token, service.template.replace("{token}", token), secret_forms(token))
        if self._vault is None:
            raise vault_unavailable("the credential vault is not configured")
        entry = await self._stored(self._vault, caller.tenant, caller.user, binding.name)
        credential = entry.credential
        if credential is None:
            raise PolicyDenied(
                f"no credential for service {binding.name!r} is stored for this user", code="credential_missing"
            )
        if credential.kind == "oauth":
            assert self._oauth is not None
            token = await self._oauth.access_token(credential, service.refresh_skew)
        else:
            try:
                token = credential.secret.reveal().decode()
            except UnicodeDecodeError:
                raise vault_unavailable(f"the stored credential for service {binding.name!r} is not text") from None
        if entry.rendered is not None and entry.rendered[0] == token:
            return entry.rendered[1]
        injected = self._render(binding, token)
        entry.rendered = (token, injected)
        return injected

    @staticmethod
    def _render(binding: Binding, token: str) -> Injected:
        service = binding.service
        if service.mechanism == "basic":
            encoded = base64.b64encode(token.encode()).decode()
            user, _, password = token.partition(":")
            return Injected(binding.name, encoded, f"Basic {encoded}", secret_forms(token, password))
        header_value = service.template.replace("{token}", token)
        return Injected(binding.name, token, header_value, secret_forms(token))
