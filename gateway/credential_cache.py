"""Credentials read from the vault, kept between calls for as long as the vault has not changed.

Reading a credential costs a SQLite read and two AES-GCM opens on a worker thread; at a proxy's
call rate that thread hop was most of what injection cost. An entry here is valid only under the
vault version it was read at (``Vault.version``, SQLite's ``data_version``): any commit to the
state database by any process (``creds delete`` or ``put``, a master-key rotation, an OAuth
refresh, a connect flow) changes the version, and the next lookup then drops every entry before
one could be used. So a credential deleted or replaced is never injected by a call whose lookup
starts after the write committed.

That no credential is stored is cached the same way, so a ``creds put`` is seen on the next call.
At most ``max_entries`` entries; the oldest goes first. Entries hold ``Credential`` and
``Injected``, which never print their secrets. Used from the event loop thread only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .vault import Credential

if TYPE_CHECKING:
    from .credentials import Injected

Key = tuple[str, str, str]  # tenant, user, service


class Entry:
    """One stored credential (None: the user has none) and its last rendering for the wire."""

    __slots__ = ("credential", "rendered")

    def __init__(self, credential: Credential | None) -> None:
        self.credential = credential
        # (token, Injected): an OAuth grant's access token changes on refresh, so a rendering is
        # reused only for the token it was made from.
        self.rendered: tuple[str, Injected] | None = None

    def __repr__(self) -> str:
        return f"Entry(stored={self.credential is not None})"


class CredentialCache:
    def __init__(self, max_entries: int = 1024) -> None:
        self._max = max_entries
        self._version: int | None = None
        self._entries: dict[Key, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, version: int, key: Key) -> Entry | None:
        """The entry for ``key`` if it was read under ``version``; a new version empties the cache."""
        if version != self._version:
            self._entries.clear()
            self._version = version
            return None
        return self._entries.get(key)

    def store(self, version: int, key: Key, entry: Entry) -> None:
        """Keep ``entry``, read after ``version`` was seen, unless the vault has changed since."""
        if version != self._version:
            return  # another call has seen a newer version while this one was reading
        if key not in self._entries and len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = entry
