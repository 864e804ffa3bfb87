"""Who may change stock: admin token for admin mutations, storefront token when set."""

from __future__ import annotations

import aiohttp
import pytest

from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import ADJUST_STOCK, CREATE_PRODUCT, PRODUCT, RESERVE
from tests.support.database import ledger, new_sku, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV


async def post(session, url, query, headers=None, **variables):
    body = {"query": query, "variables": variables}
    async with session.post(f"{url}/graphql", json=body, headers=headers or {}) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


@pytest.mark.parametrize(
    "headers",
    [None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}],
    ids=["no token", "wrong token", "not bearer"],
)
async def test_admin_mutations_need_the_admin_token(headers, server, db, make_product):
    sku = await make_product(5)
    before = (await stock(db, sku), await ledger(db, sku))
    async with aiohttp.ClientSession() as session:
        _, created = await post(
            session, server.url, CREATE_PRODUCT, headers, sku=new_sku(), name="x", quantity=1
        )
        _, adjusted = await post(
            session, server.url, ADJUST_STOCK, headers, sku=sku, delta=100, reason="steal"
        )
    for body in (created, adjusted):
        assert body["data"] is None
        error = body["errors"][0]
        assert "admin token" in error["message"]
        assert error["extensions"]["code"] == "FORBIDDEN"
    assert (await stock(db, sku), await ledger(db, sku)) == before


async def test_the_admin_token_works_and_shoppers_need_none_by_default(server, make_product):
    sku = await make_product(5)
    async with aiohttp.ClientSession() as session:
        _, restocked = await post(
            session, server.url, ADJUST_STOCK, ADMIN, sku=sku, delta=1, reason="restock"
        )
        _, held = await post(session, server.url, RESERVE, lines=[{"sku": sku, "quantity": 1}])
    assert restocked["data"]["adjustStock"]["quantity"] == 6
    assert held["data"]["reserve"]["__typename"] == "Reservation"


@pytest.fixture(scope="module")
def locked_server(database_url, tmp_path_factory):
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_STOREFRONT_TOKEN": "shop-key"}
    proc = ServerProcess(env, log=tmp_path_factory.mktemp("locked") / "log")
    yield proc
    proc.stop()


async def test_storefront_token_guards_queries_mutations_and_subscriptions(
    locked_server, make_product, db
):
    import asyncio

    await asyncio.to_thread(locked_server.wait_ready)
    sku = await make_product(3)
    shop = {"Authorization": "Bearer shop-key"}
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, locked_server.url, PRODUCT, sku=sku)
        assert status == 401 and "storefront token" in body
        status, _ = await post(
            session,
            locked_server.url,
            RESERVE,
            {"Authorization": "Bearer nope"},
            lines=[{"sku": sku, "quantity": 1}],
        )
        assert status == 401
        assert (await stock(db, sku))["reserved"] == 0

        status, body = await post(session, locked_server.url, PRODUCT, shop, sku=sku)
        assert status == 200 and body["data"]["product"]["available"] == 3
        status, body = await post(session, locked_server.url, PRODUCT, ADMIN, sku=sku)
        assert status == 200 and body["data"]["product"]["available"] == 3

        # WebSocket: the token travels in connection_init; without it the server closes 4403.
        ws = await session.ws_connect(
            locked_server.url.replace("http", "ws") + "/graphql",
            protocols=["graphql-transport-ws"],
        )
        await ws.send_json({"type": "connection_init", "payload": {}})
        closed = await ws.receive()
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4403
        socket = await GraphQLWebSocket.connect(
            session, locked_server.url, {"authorization": "Bearer shop-key"}
        )
        sub = await socket.subscribe(AVAILABILITY, skus=[sku])
        assert (await sub.next())["availability"]["available"] == 3
        await socket.close()
