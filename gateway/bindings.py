"""Which service's credential a destination may receive: pure matching, no I/O.

A binding matches on the destination the proxy actually connects to (host, port, scheme), never
on what the agent claims in a Host header. Credentials go out only over HTTPS, to one of the
service's ports, to one of its hosts; ``*.suffix`` covers sub-domains but never the apex.

Placeholders: an agent may write the marker ``wardgate:NAME`` where the credential of service NAME
belongs. A marker is honoured only on a destination bound to NAME; anywhere else the call is
refused, because forwarding it would at best leak which services the user has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .settings import ServiceSettings

MARKER_PREFIX = "wardgate:"
_MARKER = re.compile(r"wardgate:([a-z0-9][a-z0-9._-]{0,62})")


def host_matches(pattern: str, host: str) -> bool:
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


@dataclass(frozen=True, slots=True)
class Binding:
    name: str
    service: ServiceSettings


class Bindings:
    """The configured services, looked up by destination."""

    def __init__(self, services: dict[str, ServiceSettings]) -> None:
        self._services = dict(services)
        # Bindings are immutable: one per service, handed out on every call.
        self._bindings = [Binding(name, service) for name, service in self._services.items()]

    def __bool__(self) -> bool:
        return bool(self._services)

    def get(self, name: str) -> Binding | None:
        service = self._services.get(name)
        return Binding(name, service) if service is not None else None

    def resolve(self, scheme: str, host: str, port: int) -> Binding | None:
        """The service whose credential may go to this destination, or None.

        Several services may share a host on different ports; a host matched on no listed port,
        or reached over plain HTTP, gets no credential.
        """
        if scheme != "https":
            return None
        for binding in self._bindings:
            service = binding.service
            if port in service.ports and any(host_matches(pattern, host) for pattern in service.hosts):
                return binding
        return None


def markers_in(text: str) -> set[str]:
    """Service names of the placeholder markers in ``text``."""
    return set(_MARKER.findall(text)) if MARKER_PREFIX in text else set()


def marker(name: str) -> str:
    return f"{MARKER_PREFIX}{name}"
