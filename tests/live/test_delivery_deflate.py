"""permessage-deflate, which browsers offer: off by default (each socket would compress
the same update again); switched on, direct delivery leaves framing to websockets and
subscribers are told the same."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from inventory_graphql.testing.graphql_ws import GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.live.test_availability import SHAPED
from tests.support.graphql_http import SERVER_ENV


async def offering_deflate(session: aiohttp.ClientSession, url: str) -> GraphQLWebSocket:
    """A graphql-transport-ws connection whose handshake offers permessage-deflate."""
    ws = await session.ws_connect(
        f"{url.replace('http', 'ws', 1)}/graphql", protocols=["graphql-transport-ws"], compress=15
    )
    await ws.send_json({"type": "connection_init", "payload": {}})
    ack = await ws.receive_json(timeout=10)
    assert ack["type"] == "connection_ack", ack
    return GraphQLWebSocket(ws)


async def test_deflate_is_declined_by_default_and_negotiated_when_on(
    server: Any, database_url: str, gql: Any, make_product: Any, tmp_path: Any
) -> None:
    sku = await make_product(10)
    deflating = ServerProcess(
        {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_WS_PER_MESSAGE_DEFLATE": "on"},
        log=tmp_path / "server.log",
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            await asyncio.to_thread(deflating.wait_ready)
            sockets = [await offering_deflate(session, s.url) for s in (server, deflating)]
            # The negotiated window bits; 0: no permessage-deflate.
            assert sockets[0].ws.compress == 0
            assert sockets[1].ws.compress > 0
            subs = [await ws.subscribe(SHAPED, skus=[sku], withTime=True) for ws in sockets]
            snapshots = [(await sub.message())["payload"] for sub in subs]
            assert snapshots[0] == snapshots[1]
            for quantity in (3, 2):
                await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": quantity}])
                plain, deflated = [(await sub.message())["payload"] for sub in subs]
                assert plain == deflated
            assert plain["data"]["stock"]["reserved"] == 5
            for ws in sockets:
                await ws.close()
        finally:
            assert deflating.stop() == 0
