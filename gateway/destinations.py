"""Where a call may go: every destination is resolved and each of its addresses classified.

Loopback, private, link-local, cloud metadata, carrier-grade NAT, reserved, multicast and
unspecified addresses are refused unless a configured range allows them explicitly, and so are
IPv6 forms that embed such an IPv4 address (IPv4-mapped and -compatible, 6to4, NAT64, Teredo).
Odd spellings of IPv4 (decimal ``2130706433``, hex ``0x7f.1``, octal ``0177.0.0.1``, short
``127.1``) are read the way resolvers read them, so they are classified by the address they mean.

The address that passed is the address the proxy dials (see ``proxy/destinations.py``), so DNS
rebinding between the check and the connect is impossible.

A name's addresses are reused for ``[egress] resolve_cache`` seconds (30 by default; 0: every
call asks the resolver), so an agent calling the same API over and over does not wait for a DNS
lookup on each call: glibc keeps no cache of its own, so without this each call to a name was a
round trip to the resolver on a thread. The reused addresses are checked again on every call,
and a name that did not resolve is never kept, so the cache changes when the resolver is asked,
never what is allowed. Calls that need the same name while its lookup is under way wait for that
lookup instead of asking again: a burst of calls to a new host is one lookup, not one thread of
the event loop's small pool each.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, DependencyUnavailable, PolicyDenied

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance-metadata endpoints of the major clouds; refused even if a private range is allowed.
METADATA = (
    ipaddress.ip_network("169.254.169.254/32"),
    ipaddress.ip_network("169.254.170.2/32"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("192.0.0.192/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
RESOLVED_NAMES = 4096  # names whose addresses are kept (least recently used ones go first)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string spells, in any form a resolver accepts, or None for a name."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    try:
        # inet_aton accepts the BSD forms (decimal, hex, octal, 1-4 parts) exactly as getaddrinfo does.
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64 or address in NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(address))
    return None


def classify(address: IPAddress) -> str | None:
    """The reason ``address`` is not a public destination, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = classify(inner)
            return f"embedded_{reason}" if reason else None
    if any(address in net for net in METADATA if net.version == address.version):
        return "metadata"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in CGNAT:
        return "carrier_grade_nat"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True, slots=True)
class Vetted:
    host: str
    port: int
    address: str


class DestinationGuard:
    """Resolves a destination once and decides whether the proxy may dial it."""

    def __init__(
        self,
        allow_ranges: Iterable[str] = (),
        own_listeners: Iterable[tuple[str, int]] = (),
        resolve_timeout: float = 5.0,
        resolve_cache: float = 30.0,
    ) -> None:
        self._allowed: list[Network] = [ipaddress.ip_network(r, strict=False) for r in allow_ranges]
        self._own: set[tuple[IPAddress, int]] = set()
        self._own_ports_any_local: set[int] = set()
        self._exact: set[tuple[IPAddress, int]] = set()
        for host, port in own_listeners:
            self.protect(host, port)
        self._timeout = resolve_timeout
        self._keep = resolve_cache
        # lower-cased name -> (monotonic time it expires, its addresses), least recently used first
        self._resolved: collections.OrderedDict[str, tuple[float, list[IPAddress]]] = collections.OrderedDict()
        # lower-cased name -> its lookup under way, shared by every call that needs the name meanwhile
        self._lookups: dict[str, asyncio.Future[list[Any]]] = {}

    def protect(self, host: str, port: int) -> None:
        """Never let the proxy reach ``host:port`` (one of wardgate's own listeners)."""
        address = parse_ip_literal(host)
        if address is None or address.is_loopback or address.is_unspecified:
            # A listener on loopback or on every interface answers on any local address.
            self._own_ports_any_local.add(port)
        if address is not None:
            self._own.add((address, port))

    async def protect_name(self, host: str, port: int) -> None:
        """Protect ``host:port`` by every address the name has now (wardgate's own database).

        A name that does not resolve within the timeout is protected by name only: its addresses
        would then be refused anyway if they are internal, which a database's usually are.
        """
        self.protect(host, port)
        if parse_ip_literal(host) is not None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (TimeoutError, OSError, UnicodeError):
            return
        for info in infos:
            self.protect(info[4][0].split("%", 1)[0], port)

    def allow_exactly(self, host: str, port: int) -> None:
        """Allow one internal ``host:port`` (the demo echo service), nothing else on that host."""
        address = parse_ip_literal(host)
        if address is not None:
            self._exact.add((address, port))

    def check_address(self, address: IPAddress, port: int) -> None:
        if (address, port) in self._own or (port in self._own_ports_any_local and _is_local(address)):
            raise PolicyDenied("wardgate's own listeners are not reachable through the proxy",
                               code="destination_refused", reasons=["own_listener"])
        reason = classify(address)
        if reason is None or (address, port) in self._exact:
            return
        if reason != "metadata" and not reason.endswith("_metadata"):
            plain = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
            for candidate in filter(None, (address, plain)):
                if any(candidate in net for net in self._allowed if net.version == candidate.version):
                    return
        raise PolicyDenied(f"destination address is {reason.replace('_', ' ')}", code="destination_refused",
                           reasons=[reason])

    async def vet(self, host: str, port: int) -> Vetted:
        """Resolve ``host`` and check every address; return the one to dial."""
        vetted = self.vet_now(host, port)
        if vetted is not None:
            return vetted
        return self._checked(host, port, await self._resolve(host, port))

    def vet_now(self, host: str, port: int) -> Vetted | None:
        """``vet`` without waiting, for an IP literal or a name resolved within ``resolve_cache``:
        the address to dial, or the error ``vet`` would raise. None when the name must be resolved
        first (then await ``vet``)."""
        literal = parse_ip_literal(host)
        if literal is not None:
            return self._checked(host, port, [literal])
        if not host or len(host) > 253:
            raise BadRequest("destination host name is invalid", code="destination_invalid")
        addresses = self._recall(host)
        return self._checked(host, port, addresses) if addresses else None

    def _checked(self, host: str, port: int, addresses: list[IPAddress]) -> Vetted:
        # Every address must pass: a name that also resolves to an internal address is refused,
        # whichever one the resolver would have put first.
        for address in addresses:
            self.check_address(address, port)
        return Vetted(host, port, str(addresses[0]))

    def _recall(self, host: str) -> list[IPAddress] | None:
        """The addresses ``host`` resolved to within the last ``resolve_cache`` seconds, if any."""
        name = host.lower()
        kept = self._resolved.get(name)
        if kept is None:
            return None
        if kept[0] <= time.monotonic():
            del self._resolved[name]
            return None
        self._resolved.move_to_end(name)
        return kept[1]

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host`` from the resolver (or from its lookup already under way),
        kept for ``resolve_cache`` seconds."""
        name = host.lower()
        lookup = self._lookups.get(name)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(host, port))
            self._lookups[name] = lookup
            lookup.add_done_callback(functools.partial(self._looked_up, name))
        try:
            # Shielded: a caller that goes away (its client hung up) does not cancel the others' lookup.
            infos = await asyncio.shield(lookup)
        except TimeoutError:
            raise DependencyUnavailable("destination name did not resolve in time", code="dns_unavailable") from None
        except (socket.gaierror, UnicodeError):
            raise PolicyDenied("destination name does not resolve", code="destination_unresolvable",
                               reasons=["unresolvable"]) from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))
        if not addresses:
            raise PolicyDenied("destination name does not resolve", code="destination_unresolvable",
                               reasons=["unresolvable"])
        if self._keep > 0:
            self._resolved[name] = (time.monotonic() + self._keep, addresses)
            self._resolved.move_to_end(name)
            if len(self._resolved) > RESOLVED_NAMES:
                self._resolved.popitem(last=False)
        return addresses

    async def _lookup(self, host: str, port: int) -> list[Any]:
        """One question to the resolver, within ``resolve_timeout``."""
        async with asyncio.timeout(self._timeout):
            return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)

    def _looked_up(self, name: str, lookup: asyncio.Future[list[Any]]) -> None:
        if self._lookups.get(name) is lookup:
            del self._lookups[name]
        if not lookup.cancelled():
            lookup.exception()  # every caller may have gone away: nobody else would look at it


def _is_local(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified
