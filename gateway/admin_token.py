"""The admin credential: a random bearer secret under ``<home>/admin.token`` (0600).

Admin endpoints accept this secret only; an agent token is never an admin credential.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path


def load_or_create(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = "wga_" + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def matches(presented: str | None, expected: str) -> bool:
    if not presented:
        return False
    scheme, _, value = presented.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected.encode())
