"""Fixtures: a real PostgreSQL (embedded unless TEST_DATABASE_URL is set), a real server
process speaking HTTP, and connections to read what the database holds. The helpers the
tests import live in tests/support/ (database.py, graphql_http.py, ...)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from inventory_graphql.config import Settings
from inventory_graphql.database import connect_pool
from inventory_graphql.embedded_db import embedded_postgres
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.testing.server import ServerProcess
from tests.support.database import create_database, new_sku
from tests.support.graphql_http import SERVER_ENV, GraphQLClient, graphql_client


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: TEST_DATABASE_URL's, or an embedded one for this run."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    with embedded_postgres(tmp_path_factory.mktemp("embedded-pg")) as url:
        asyncio.run(_without_fsync(url))
        yield url


async def _without_fsync(url: str) -> None:
    """This run's own, throwaway cluster: commits need not wait for the disk (measured
    here: 4-5 ms a commit with fsync, 0.45 ms without; the suite commits tens of thousands
    of times). fsync guards against the machine crashing, which no test does; a PostgreSQL
    killed or stopped still finds every commit in the OS's cache."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET fsync = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> str:
    """One migrated database shared by the session; tests use their own skus."""
    return asyncio.run(create_database(postgres_url))


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def gql(server: ServerProcess) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(server.url) as client:
        yield client


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool as the server builds it (deadlines included)."""
    async with connect_pool(database_url, Settings()) as pool:
        yield pool


@pytest.fixture
def service(pool: asyncpg.Pool) -> InventoryService:
    """The service in this process, one transaction per reserve and no background work
    running (no sweeper): tests drive expiry themselves."""
    return InventoryService(pool, Settings(coalesce_reservations=False))


@pytest.fixture
def make_product(db: asyncpg.Connection):
    """Create a product through the service's own SQL path; return its sku."""
    from inventory_graphql.inventory.catalog import CREATE

    async def make(quantity: int, name: str = "Test product") -> str:
        sku = new_sku()
        assert await db.fetchrow(CREATE, sku, name, quantity)
        return sku

    return make


@pytest.fixture
async def own_database(postgres_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone; dropped afterwards (fault and
    webhook tests kill connections by database and lock rows: nothing else is touched)."""
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
