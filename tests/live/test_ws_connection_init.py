"""graphql-transport-ws's connection_init through a real server: a null or absent payload
is acknowledged, and every token (admin, storefront, buyer) may travel in the payload as
`{"authorization": "Bearer <token>"}` (a browser cannot set headers on a WebSocket)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.testing.graphql_ws import AVAILABILITY
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import ADJUST_STOCK, RESERVE
from tests.support.database import stock
from tests.support.graphql_http import ADMIN_TOKEN, SERVER_ENV

SHOP_TOKEN = "ws-init-shop-key"
SECRET = "ws-connection-init-buyer-secret-" + "k" * 32
BUYERS = BuyerTokens(SECRET)
ABSENT = object()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture(scope="module")
def locked_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server that needs the storefront token and verifies buyer tokens."""
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_STOREFRONT_TOKEN": SHOP_TOKEN,
        "INVENTORY_BUYER_TOKEN_SECRET": SECRET,
    }
    proc = ServerProcess(env, log=tmp_path_factory.mktemp("ws-init") / "log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


class Socket:
    """A bare graphql-transport-ws connection: what the server answers, message by message."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None once the server has closed the socket."""
        while True:
            message = await self.ws.receive(timeout=10)
            if message.type != aiohttp.WSMsgType.TEXT:
                return None
            data: dict[str, Any] = json.loads(message.data)
            if data["type"] != "ping":
                return data
            await self.ws.send_json({"type": "pong"})

    async def send(self, query: str, **variables: Any) -> dict[str, Any] | None:
        """Start one operation; the server's first message about it."""
        await self.ws.send_json(
            {"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )
        return await self.receive()

    async def run(self, query: str, **variables: Any) -> dict[str, Any]:
        """One operation's first result (a query or mutation's only one)."""
        message = await self.send(query, **variables)
        assert message is not None and message["type"] == "next", message
        payload: dict[str, Any] = message["payload"]
        return payload


async def init(
    session: aiohttp.ClientSession, url: str, payload: object = ABSENT
) -> tuple[Socket, dict[str, Any] | None]:
    """A socket after connection_init with `payload` (ABSENT: no payload key): the
    server's answer, None when it closed the socket instead."""
    ws = await session.ws_connect(
        url.replace("http", "ws", 1) + "/graphql", protocols=["graphql-transport-ws"]
    )
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not ABSENT:
        message["payload"] = payload
    await ws.send_json(message)
    socket = Socket(ws)
    return socket, await socket.receive()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("payload", [None, ABSENT, {}], ids=["null", "absent", "empty"])
async def test_a_null_or_absent_payload_is_acknowledged(
    payload: object, server: ServerProcess, session: aiohttp.ClientSession, make_product: Any
) -> None:
    sku = await make_product(4)
    socket, answer = await init(session, server.url, payload)
    assert answer is not None and answer["type"] == "connection_ack", socket.ws.close_code
    result = await socket.run(AVAILABILITY, skus=[sku])
    assert result["data"]["availability"]["available"] == 4
    await socket.ws.close()


async def test_the_admin_token_in_the_payload_runs_admin_operations(
    server: ServerProcess,
    session: aiohttp.ClientSession,
    make_product: Any,
    db: asyncpg.Connection,
) -> None:
    sku = await make_product(5)
    restock = {"sku": sku, "delta": 2, "reason": "ws restock"}
    # Without the token the same mutation is refused and changes nothing...
    anonymous, _ = await init(session, server.url, None)
    refused = await anonymous.run(ADJUST_STOCK, **restock)
    (error,) = refused["errors"]
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert "connection_init" in error["message"]  # it says where a WebSocket sends the token
    assert (await stock(db, sku))["quantity"] == 5
    await anonymous.ws.close()
    # ...with it in connection_init (no header on the upgrade request) it runs.
    admin, answer = await init(session, server.url, bearer(ADMIN_TOKEN))
    assert answer is not None and answer["type"] == "connection_ack"
    done = await admin.run(ADJUST_STOCK, **restock)
    assert "errors" not in done, done
    assert done["data"]["adjustStock"]["quantity"] == 7
    assert (await stock(db, sku))["quantity"] == 7
    await admin.ws.close()


@pytest.mark.parametrize(
    "payload",
    [
        None,
        ABSENT,
        bearer("not-a-token"),
        bearer(BuyerTokens("x" * 32).mint("b")),
        bearer(jwt.encode({"sub": "b", "exp": int(time.time()) - 60}, SECRET)),
        "Bearer x",
    ],
    ids=["null", "absent", "wrong", "forged-buyer", "expired-buyer", "not-an-object"],
)
async def test_without_a_good_token_a_locked_server_closes_with_4403(
    payload: object, locked_server: ServerProcess, session: aiohttp.ClientSession
) -> None:
    socket, answer = await init(session, locked_server.url, payload)
    expected = 4400 if isinstance(payload, str) else 4403  # not an object: a protocol error
    assert answer is None and socket.ws.close_code == expected


@pytest.mark.parametrize("who", ["storefront", "buyer", "admin"])
async def test_each_token_in_the_payload_is_served_on_a_locked_server(
    who: str,
    locked_server: ServerProcess,
    session: aiohttp.ClientSession,
    make_product: Any,
    db: asyncpg.Connection,
) -> None:
    token = {"storefront": SHOP_TOKEN, "buyer": BUYERS.mint("ws-buyer"), "admin": ADMIN_TOKEN}
    sku = await make_product(3)
    socket, answer = await init(session, locked_server.url, bearer(token[who]))
    assert answer is not None and answer["type"] == "connection_ack", socket.ws.close_code
    held = await socket.run(RESERVE, lines=[{"sku": sku, "quantity": 1}])
    assert held["data"]["reserve"]["__typename"] == "Reservation", held
    await socket.ws.close()
    assert (await stock(db, sku))["reserved"] == 1
    buyer = await db.fetchval(
        "SELECT buyer FROM reservation WHERE id = $1", held["data"]["reserve"]["id"]
    )
    # A buyer token names the buyer whose hold it is; the others hold anonymously.
    assert buyer == ("ws-buyer" if who == "buyer" else None)


FEED = "subscription { stockEvents { __typename ... on StockEvent { kind sku } } }"


async def test_the_admin_token_in_the_payload_follows_the_stock_event_feed(
    server: ServerProcess, session: aiohttp.ClientSession, make_product: Any
) -> None:
    await make_product(2)  # at least one event to replay
    anonymous, _ = await init(session, server.url, {})
    refused = await anonymous.send(FEED)
    assert refused is not None and refused["type"] == "error", refused
    assert refused["payload"][0]["extensions"]["code"] == "FORBIDDEN"
    await anonymous.ws.close()
    admin, _ = await init(session, server.url, bearer(ADMIN_TOKEN))
    first = await admin.run(FEED)
    assert first["data"]["stockEvents"]["__typename"] == "StockEvent", first
    await admin.ws.close()
