"""Direct delivery (updates written straight to the socket) against Strawberry's ordinary
subscription path (INVENTORY_DIRECT_DELIVERY=off): subscribers are told the same."""

from __future__ import annotations

import asyncio

import aiohttp

from inventory_graphql.testing.graphql_ws import GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RELEASE, RESERVE
from tests.live.test_availability import SHAPED
from tests.support.graphql_http import SERVER_ENV


async def test_subscribers_are_told_the_same_with_direct_delivery_off(
    server, database_url, gql, make_product, tmp_path
):
    sku = await make_product(10)
    ordinary = ServerProcess(
        {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_DIRECT_DELIVERY": "off"},
        log=tmp_path / "server.log",
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            await asyncio.to_thread(ordinary.wait_ready)
            sockets = [await GraphQLWebSocket.connect(session, s.url) for s in (server, ordinary)]
            subs = [await ws.subscribe(SHAPED, skus=[sku], withTime=True) for ws in sockets]
            snapshots = [(await sub.message())["payload"] for sub in subs]
            assert snapshots[0] == snapshots[1]

            held = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 3}]))["reserve"]
            direct, plain = [(await sub.message())["payload"] for sub in subs]
            assert direct == plain
            assert direct["data"]["stock"]["reserved"] == 3

            await gql.execute(RELEASE, id=held["id"])
            direct, plain = [(await sub.message())["payload"] for sub in subs]
            assert direct == plain
            assert direct["data"]["stock"]["left"] == 10
            for ws in sockets:
                await ws.close()
        finally:
            assert ordinary.stop() == 0
