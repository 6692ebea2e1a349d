"""Address classification: every internal form refused, by the address it means."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

import pytest

from wardgate.gateway.destinations import DestinationGuard, classify, parse_ip_literal
from wardgate.gateway.errors import PolicyDenied


@pytest.mark.parametrize(
    ("spelling", "meaning"),
    [
        ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("[::1]", "::1"),
        ("169.254.169.254", "169.254.169.254"), ("0xa9fea9fe", "169.254.169.254"), ("10.1", "10.0.0.1"),
        ("fe80::1%eth0", "fe80::1"), ("api.github.com", None), ("1.2.3.4.5", None), ("", None),
    ],
)
def test_odd_spellings_mean_what_resolvers_think(spelling: str, meaning: str | None) -> None:
    parsed = parse_ip_literal(spelling)
    assert (str(parsed) if parsed else None) == meaning


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"), ("172.16.5.4", "private"),
        ("192.168.1.1", "private"), ("169.254.169.254", "metadata"), ("169.254.1.1", "link_local"),
        ("fe80::1", "link_local"), ("100.64.0.1", "carrier_grade_nat"), ("100.100.100.200", "metadata"),
        ("fd00:ec2::254", "metadata"), ("fc00::1", "private"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("240.0.0.1", "private"), ("198.18.0.1", "private"), ("192.0.2.1", "private"),
        ("::ffff:127.0.0.1", "embedded_loopback"), ("::ffff:169.254.169.254", "embedded_metadata"),
        ("2002:7f00:1::", "embedded_loopback"), ("64:ff9b::a00:1", "embedded_private"),
        ("::7f00:1", "embedded_loopback"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "embedded_private"),
        ("8.8.8.8", None), ("2606:4700:4700::1111", None), ("::ffff:8.8.8.8", None),
    ],
)
def test_classification(address: str, reason: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == reason


def vet(guard: DestinationGuard, host: str, port: int = 443) -> str:
    return asyncio.run(guard.vet(host, port)).address


def test_allowed_ranges_open_only_what_they_name() -> None:
    guard = DestinationGuard(["127.0.0.0/8"])
    assert vet(guard, "127.0.0.2") == "127.0.0.2"
    assert ipaddress.ip_address(vet(guard, "::ffff:127.0.0.1")) == ipaddress.ip_address("::ffff:127.0.0.1")
    for host in ("10.0.0.1", "::1", "169.254.169.254"):
        with pytest.raises(PolicyDenied):
            vet(guard, host)


def test_metadata_stays_refused_even_inside_an_allowed_range() -> None:
    guard = DestinationGuard(["169.254.0.0/16", "0.0.0.0/0"])
    with pytest.raises(PolicyDenied) as caught:
        vet(guard, "169.254.169.254", 80)
    assert caught.value.reasons == ["metadata"]


def test_own_listeners_are_refused_even_when_loopback_is_allowed() -> None:
    guard = DestinationGuard(["127.0.0.0/8", "::1/128"], own_listeners=[("127.0.0.1", 8081)])
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "2130706433"):
        with pytest.raises(PolicyDenied) as caught:
            vet(guard, host, 8081)
        assert caught.value.reasons == ["own_listener"]
    assert vet(guard, "127.0.0.1", 8082) == "127.0.0.1"


def test_names_are_resolved_and_every_address_checked() -> None:
    with pytest.raises(PolicyDenied) as caught:
        vet(DestinationGuard(), "localhost")
    assert caught.value.code == "destination_refused"
    with pytest.raises(PolicyDenied) as caught:
        vet(DestinationGuard(), "no-such-host.invalid")
    assert caught.value.code == "destination_unresolvable"


def test_exact_allowance_is_one_port_only() -> None:
    guard = DestinationGuard()
    guard.allow_exactly("127.0.0.1", 8089)
    assert vet(guard, "127.0.0.1", 8089) == "127.0.0.1"
    with pytest.raises(PolicyDenied):
        vet(guard, "127.0.0.1", 8088)


def test_own_database_is_protected_by_every_address_of_its_name() -> None:
    guard = DestinationGuard(["127.0.0.0/8", "::1/128"])
    asyncio.run(guard.protect_name("localhost", 5432))
    for host in ("127.0.0.1", "localhost", "2130706433"):
        with pytest.raises(PolicyDenied) as caught:
            vet(guard, host, 5432)
        assert caught.value.reasons == ["own_listener"]
    assert vet(guard, "127.0.0.1", 5433) == "127.0.0.1"


class CountingGuard(DestinationGuard):
    """The real guard and the real resolver, counting how often the resolver is asked."""

    lookups = 0

    async def _lookup(self, host: str, port: int) -> list[Any]:
        self.lookups += 1
        return await super()._lookup(host, port)


class HeldGuard(CountingGuard):
    """Each lookup waits for ``release`` before it asks the (real) resolver, so that calls can
    arrive while it is under way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def _lookup(self, host: str, port: int) -> list[Any]:
        self.lookups += 1
        await self.release.wait()
        return await DestinationGuard._lookup(self, host, port)


def test_a_name_is_resolved_once_while_its_addresses_are_kept() -> None:
    guard = CountingGuard(["127.0.0.0/8", "::1/128"])
    addresses = {vet(guard, host, 8082) for host in ("localhost", "LOCALHOST", "localhost")}
    assert len(addresses) == 1 and guard.lookups == 1, "one lookup, whatever the case of the name"
    every_call = CountingGuard(["127.0.0.0/8", "::1/128"], resolve_cache=0)
    for _ in range(3):
        vet(every_call, "localhost", 8082)
    assert every_call.lookups == 3


def test_kept_addresses_expire() -> None:
    guard = CountingGuard(["127.0.0.0/8", "::1/128"], resolve_cache=0.5)
    vet(guard, "localhost", 8082)
    vet(guard, "localhost", 8082)
    assert guard.lookups == 1
    time.sleep(0.6)
    vet(guard, "localhost", 8082)
    assert guard.lookups == 2


def test_kept_addresses_are_checked_again_on_every_call() -> None:
    """The cache saves the lookup, never the check: a listener protected after the name was
    resolved is refused at the next call, and so are kept addresses the rules do not allow."""
    guard = CountingGuard(["127.0.0.0/8", "::1/128"])
    vet(guard, "localhost", 8082)
    guard.protect("127.0.0.1", 8082)
    with pytest.raises(PolicyDenied) as caught:
        vet(guard, "localhost", 8082)
    assert caught.value.reasons == ["own_listener"] and guard.lookups == 1
    strict = CountingGuard()
    for _ in range(2):
        with pytest.raises(PolicyDenied) as caught:
            vet(strict, "localhost", 8082)
        assert caught.value.code == "destination_refused"
    assert strict.lookups == 1


def test_calls_during_a_lookup_share_it() -> None:
    """A burst of calls to a name is one question to the resolver (and one thread of the event
    loop's small pool), whatever the cache keeps: with ``resolve_cache = 0`` too."""

    async def burst() -> None:
        guard = HeldGuard(["127.0.0.0/8", "::1/128"], resolve_cache=0)
        calls = [asyncio.create_task(guard.vet(host, 8082)) for host in ("localhost", "LocalHost", "localhost")]
        await asyncio.sleep(0.05)
        guard.release.set()
        vetted = await asyncio.gather(*calls)
        assert {v.address for v in vetted} == {vetted[0].address} and guard.lookups == 1
        await guard.vet("localhost", 8082)
        assert guard.lookups == 2, "a lookup that ended is not reused when nothing is kept"

    asyncio.run(burst())


def test_a_caller_that_goes_away_leaves_the_shared_lookup_running() -> None:
    async def cancelled_first() -> None:
        guard = HeldGuard(["127.0.0.0/8", "::1/128"])
        first = asyncio.create_task(guard.vet("localhost", 8082))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(guard.vet("localhost", 8082))
        await asyncio.sleep(0.05)
        first.cancel()
        guard.release.set()
        assert (await second).address in ("127.0.0.1", "::1")
        assert first.cancelled() and guard.lookups == 1

    asyncio.run(cancelled_first())


def test_calls_sharing_a_failed_lookup_each_get_the_refusal() -> None:
    async def burst() -> None:
        guard = HeldGuard()
        calls = [asyncio.create_task(guard.vet("no-such-host.invalid", 443)) for _ in range(3)]
        await asyncio.sleep(0.05)
        guard.release.set()
        refusals = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, PolicyDenied) and r.code == "destination_unresolvable" for r in refusals)
        assert len({id(r) for r in refusals}) == 3 and guard.lookups == 1

    asyncio.run(burst())


def test_a_name_that_does_not_resolve_is_asked_again() -> None:
    guard = CountingGuard()
    for _ in range(2):
        with pytest.raises(PolicyDenied) as caught:
            vet(guard, "no-such-host.invalid")
        assert caught.value.code == "destination_unresolvable"
    assert guard.lookups == 2
