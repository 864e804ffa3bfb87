"""Several server processes on one database, as behind a load balancer."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.database import check, stock
from tests.support.graphql_http import SERVER_ENV


@pytest.fixture
async def two_instances(database_url, tmp_path):
    servers = [
        ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV}, log=tmp_path / f"log{i}")
        for i in range(2)
    ]
    try:
        for server in servers:
            await asyncio.to_thread(server.wait_ready)
        yield servers
    finally:
        assert [server.stop() for server in servers] == [0, 0]


async def test_reservations_through_both_are_seen_by_subscribers_on_both(
    two_instances, db, make_product
):
    sku = await make_product(300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = [await GraphQLWebSocket.connect(session, s.url) for s in two_instances]
        subs = [await ws.subscribe(AVAILABILITY, skus=[sku]) for ws in sockets]
        for sub in subs:
            assert (await sub.next())["availability"]["available"] == 300

        async def shopper(i: int) -> str:
            server = two_instances[i % 2]
            body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}
            async with session.post(f"{server.url}/graphql", json=body) as response:
                return (await response.json())["data"]["reserve"]["__typename"]

        outcomes = Counter(await asyncio.gather(*(shopper(i) for i in range(500))))
        assert outcomes == {"Reservation": 300, "InsufficientStock": 200}

        # Both processes' subscribers end on the same, final count.
        for sub in subs:
            latest = None
            while latest is None or latest["available"] != 0:
                latest = (await sub.next())["availability"]
        for ws in sockets:
            await ws.close()
    assert (await stock(db, sku))["reserved"] == 300
    assert (await check(db)).ok


async def test_serve_with_two_workers(database_url, db, make_product, tmp_path):
    sku = await make_product(100)
    server = ServerProcess(
        {"DATABASE_URL": database_url, **SERVER_ENV}, ["--workers", "2"], log=tmp_path / "log"
    )
    try:
        await asyncio.to_thread(server.wait_ready)
        async with aiohttp.ClientSession() as session:
            body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}

            async def one() -> str:
                async with session.post(f"{server.url}/graphql", json=body) as response:
                    return (await response.json())["data"]["reserve"]["__typename"]

            outcomes = Counter(await asyncio.gather(*(one() for _ in range(300))))
        assert outcomes == {"Reservation": 100, "InsufficientStock": 200}
    finally:
        assert server.stop() == 0
    assert (await check(db)).ok
