"""The revocation view over a real SQLite store: which lever covers which identity, and the
staleness bound that turns a view that cannot refresh into 503s."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from wardgate.gateway.errors import BadRequest, ConfigError, DependencyUnavailable, IdentityError
from wardgate.gateway.revocations import RevocationView, open_store
from wardgate.gateway.revocations_sqlite import SqliteRevocations
from wardgate.gateway.settings import load_settings

REVOKED_AT = 1_000_000.0


@dataclass
class Identity:
    agent: str = "bot"
    token_id: str = "jti-1"
    run: str | None = None
    key_id: str | None = "kid-1"
    issued_at: float = REVOKED_AT - 10


@pytest.fixture
async def view(tmp_path: Path) -> RevocationView:
    store = SqliteRevocations(tmp_path / "state.db")
    await store.open()
    for kind, subject in (("token", "jti-9"), ("run", "run-9"), ("key", "kid-9"), ("agent", "bot-9")):
        await store.add(kind, subject, "", "test", REVOKED_AT)
    view = RevocationView(store, max_staleness=0.3)
    await view.refresh()
    return view


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (Identity(), None),
        (Identity(token_id="jti-9"), "token_revoked"),
        (Identity(run="run-9"), "run_revoked"),
        (Identity(run="run-8"), None),
        (Identity(key_id="kid-9"), "key_revoked"),
        (Identity(agent="bot-9"), "agent_revoked"),
        (Identity(agent="bot-9", issued_at=REVOKED_AT), "agent_revoked"),  # same instant: covered
        (Identity(agent="bot-9", issued_at=REVOKED_AT + 1), None),  # minted afterwards
    ],
)
async def test_levers(view: RevocationView, identity: Identity, reason: str | None) -> None:
    assert view.revoked_reason(identity) == reason
    if reason is None:
        view.check(identity)
    else:
        with pytest.raises(IdentityError) as refused:
            view.check(identity)
        assert (refused.value.status, refused.value.code, refused.value.reasons) == (407, "identity_revoked", [reason])


async def test_refresh_is_incremental_and_notifies_subscribers(view: RevocationView, tmp_path: Path) -> None:
    seen: list[list[str]] = []
    view.subscribe(lambda rows: seen.append([r.subject for r in rows]))
    writer = SqliteRevocations(tmp_path / "state.db")  # another process's store on the same file
    await writer.open()
    await writer.add("token", "jti-1", "", "test", REVOKED_AT)
    assert await view.refresh() and seen == [["jti-1"]]
    assert await view.refresh() == [] and seen == [["jti-1"]]
    assert view.revoked_reason(Identity()) == "token_revoked"


async def test_a_view_that_cannot_refresh_refuses_with_503(view: RevocationView) -> None:
    task = asyncio.create_task(view.run())
    await asyncio.sleep(0.1)
    view.check(Identity())  # fresh
    await view._store.close()  # the store is gone: every refresh now fails
    await asyncio.sleep(0.6)
    with pytest.raises(DependencyUnavailable) as stale:
        view.check(Identity())
    assert (stale.value.status, stale.value.code) == (503, "revocation_unavailable")
    task.cancel()


async def test_bad_revocations_are_refused(view: RevocationView) -> None:
    from wardgate.gateway.revocations import check_revocation

    for kind, subject in (("everything", "x"), ("token", ""), ("token", "a\nb"), ("token", "x" * 300)):
        with pytest.raises(BadRequest):
            check_revocation(kind, subject, "")


def test_store_url_selection(tmp_path: Path) -> None:
    assert type(open_store(None, tmp_path / "s.db")).__name__ == "SqliteRevocations"
    assert type(open_store("postgresql://u@127.0.0.1/db", tmp_path / "s.db")).__name__ == "PostgresRevocations"
    with pytest.raises(ConfigError):
        open_store("mysql://nope", tmp_path / "s.db")


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["RS256", "HS512"], []])
def test_trusted_issuer_refuses_symmetric_or_none_algorithms(tmp_path: Path, algorithms: list[str]) -> None:
    config = tmp_path / "wardgate.toml"
    config.write_text(f'version = 1\n[[trusted_issuers]]\nissuer = "x"\njwks = "/j"\naudience = "a"\n'
                      f"algorithms = {algorithms!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError):
        load_settings(config_file=config, environ={}, cwd=tmp_path)
