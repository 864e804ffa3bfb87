"""Fault tests that kill connections or lock rows get a database of their own, so what
they do to it (pg_terminate_backend by database, row locks) touches nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support.database import create_database


@pytest.fixture
async def own_database(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone; dropped afterwards."""
    url = await create_database(postgres_url)
    yield url
    conn = await asyncpg.connect(postgres_url)
    try:
        name = urlsplit(url).path.lstrip("/")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def own_db(own_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to that database, for the test's own reads."""
    conn = await asyncpg.connect(own_database, command_timeout=60)
    yield conn
    await conn.close()
