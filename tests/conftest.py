"""Fixtures: a real PostgreSQL (embedded unless TEST_DATABASE_URL is set), a real server
process speaking HTTP, and helpers to read what the database holds."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from inventory_graphql.config import Settings
from inventory_graphql.database import connect_pool, create_migrated_database
from inventory_graphql.embedded_db import embedded_postgres
from inventory_graphql.inventory.reconcile import Report, reconcile
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: TEST_DATABASE_URL's, or an embedded one for this run."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    with embedded_postgres(tmp_path_factory.mktemp("embedded-pg")) as url:
        yield url


async def create_database(server_url: str) -> str:
    """A fresh, migrated database on the server; its URL."""
    return await create_migrated_database(server_url, f"inventory_test_{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> str:
    """One migrated database shared by the session; tests use their own skus."""
    return asyncio.run(create_database(postgres_url))


ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SERVER_ENV = {"INVENTORY_SWEEP_INTERVAL_SECONDS": "0.2", "INVENTORY_ADMIN_TOKEN": ADMIN_TOKEN}


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV})
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


class GraphQLClient:
    """Sends the admin token, so tests can create and restock products."""

    # aiohttp rather than httpx: httpx's client costs ~1-2 ms of CPU per request and
    # slows down further with hundreds of connections, which starved the race tests.
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        """POST one document with variables; fail on any top-level error."""
        body = await self.raw(query, **variables)
        assert "errors" not in body, body
        return body["data"]

    async def raw(self, query: str, **variables: Any) -> dict[str, Any]:
        body = {"query": query, "variables": variables}
        async with self.http.post("/graphql", json=body, headers=ADMIN) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
async def gql(server: ServerProcess) -> AsyncIterator[GraphQLClient]:
    async with aiohttp.ClientSession(
        server.url,
        connector=aiohttp.TCPConnector(limit=256),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as http:
        yield GraphQLClient(http)


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


def new_sku(prefix: str = "T") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_product(db: asyncpg.Connection):
    """Create a product through the service's own SQL path; return its sku."""
    from inventory_graphql.inventory.catalog import CREATE

    async def make(quantity: int, name: str = "Test product") -> str:
        sku = new_sku()
        assert await db.fetchrow(CREATE, sku, name, quantity)
        return sku

    return make


async def stock(db: asyncpg.Connection, sku: str) -> dict[str, int]:
    row = await db.fetchrow(
        "SELECT quantity, reserved, quantity - reserved AS available, version "
        "FROM product WHERE sku = $1",
        sku,
    )
    return dict(row) if row else {}


async def ledger(db: asyncpg.Connection, sku: str) -> list[tuple[str, int, int]]:
    rows = await db.fetch(
        "SELECT m.kind::text, m.quantity_delta, m.reserved_delta FROM stock_movement m "
        "JOIN product p ON p.id = m.product_id WHERE p.sku = $1 ORDER BY m.id",
        sku,
    )
    return [tuple(r) for r in rows]


async def told_equals_held(db: asyncpg.Connection, skus: list[str], outcomes: list[Any]) -> None:
    """Every hold on these products is one a caller was told about, with the lines it was
    told, and every hold a caller was told about exists."""
    rows = await db.fetch(
        """
        SELECT r.id::text, r.status::text,
               array_agg(p.sku || ':' || l.quantity ORDER BY p.sku) AS lines
        FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id
        JOIN product p ON p.id = l.product_id
        WHERE r.id IN (SELECT reservation_id FROM reservation_line
                       WHERE product_id IN (SELECT id FROM product WHERE sku = any($1::text[])))
        GROUP BY r.id
        """,
        skus,
    )
    held = {row["id"]: row["lines"] for row in rows}
    told = {
        o.id: [f"{line.sku}:{line.quantity}" for line in o.lines]
        for o in outcomes
        if type(o).__name__ == "Reservation"
    }
    assert held == told, f"held but not told: {held.keys() - told.keys()}, told: {told}"


async def check(db: asyncpg.Connection) -> Report:
    return await reconcile(db, overdue_grace_seconds=5)
