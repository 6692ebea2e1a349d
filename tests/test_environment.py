"""The services `make test` promises are really there (PostgreSQL 15 for the tests that use it)."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from support import require


def test_postgres_started_by_make_test() -> None:
    dsn = os.environ.get("WARDGATE_TEST_PG_DSN")
    require("PostgreSQL (run through `make test` or scripts/postgres.sh)", dsn is not None)

    async def version() -> int:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await conn.fetchval("SHOW server_version_num", timeout=10)
        finally:
            await conn.close()

    assert int(asyncio.run(version())) // 10000 == 15
