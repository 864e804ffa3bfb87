"""Buyers at the edge, through a real server: buyer tokens that cannot be used are refused
before anything runs, and a buyer's holds and idempotency keys are its own."""

from __future__ import annotations

import base64
import json
import time

import aiohttp
import jwt
import pytest

from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.testing.graphql_ws import GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RELEASE, RESERVE
from tests.support.database import ledger, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV

SECRET = "security-test-buyer-secret-" + "k" * 37  # 64 bytes: HS512 below warns if shorter
TOKENS = BuyerTokens(SECRET)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def later(seconds: int = 600) -> int:
    return int(time.time()) + seconds


def unsigned(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


BAD_TOKENS = {
    "expired": (jwt.encode({"sub": "b", "exp": later(-60)}, SECRET), "EXPIRED"),
    "forged": (jwt.encode({"sub": "b", "exp": later()}, "f" * 64), "INVALID"),
    "alg none": (unsigned({"sub": "b", "exp": later()}), "INVALID"),
    "other alg": (jwt.encode({"sub": "b", "exp": later()}, SECRET, "HS512"), "INVALID"),
    "no exp": (jwt.encode({"sub": "b"}, SECRET), "INVALID"),
    "malformed": ("eyJhbGciOi.not-base64!.x", "INVALID"),
    "not a jwt": ("let-me-in", "INVALID"),
}


@pytest.fixture(scope="module")
def buyer_server(database_url, tmp_path_factory):
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_BUYER_TOKEN_SECRET": SECRET}
    log = tmp_path_factory.mktemp("buyers") / "log"
    proc = ServerProcess(env, log=log)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def post(session, url, query, headers=None, **variables):
    body = {"query": query, "variables": variables}
    async with session.post(f"{url}/graphql", json=body, headers=headers or {}) as response:
        return response.status, response.headers, await response.text()


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_unusable_buyer_tokens_get_401_and_change_nothing(
    name, buyer_server, session, db, make_product
):
    token, reason = BAD_TOKENS[name]
    sku = await make_product(5)
    # An anonymous hold: a bad token must not be served as anonymous and release it.
    status, _, text = await post(
        session, buyer_server.url, RESERVE, lines=[{"sku": sku, "quantity": 2}]
    )
    held = json.loads(text)["data"]["reserve"]
    assert status == 200 and held["__typename"] == "Reservation", text
    before = (await stock(db, sku), await ledger(db, sku))

    for query, variables in (
        (RESERVE, {"lines": [{"sku": sku, "quantity": 1}]}),
        (RELEASE, {"id": held["id"]}),
    ):
        status, headers, text = await post(
            session, buyer_server.url, query, bearer(token), **variables
        )
        assert status == 401, text
        assert headers["content-type"] == "application/json"
        assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
        body = json.loads(text)
        assert body["data"] is None
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UNAUTHENTICATED"
        assert error["extensions"]["reason"] == reason
        assert ("has expired" if reason == "EXPIRED" else "is invalid") in error["message"]
        assert token not in text

    assert (await stock(db, sku), await ledger(db, sku)) == before
    status = await db.fetchval("SELECT status::text FROM reservation WHERE id = $1", held["id"])
    assert status == "PENDING"
    assert token not in buyer_server.log.read_text()


async def test_a_bad_token_in_connection_init_is_refused(buyer_server, session):
    for token, _ in BAD_TOKENS.values():
        ws = await session.ws_connect(
            buyer_server.url.replace("http", "ws") + "/graphql",
            protocols=["graphql-transport-ws"],
        )
        await ws.send_json(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        )
        closed = await ws.receive(timeout=10)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4403
    # A good one is acknowledged (connect() asserts the connection_ack).
    socket = await GraphQLWebSocket.connect(
        session, buyer_server.url, {"authorization": f"Bearer {TOKENS.mint('b')}"}
    )
    await socket.close()


async def test_admin_and_anonymous_callers_are_served_as_before(
    buyer_server, session, make_product
):
    sku = await make_product(5)
    for headers in (None, ADMIN):
        status, _, text = await post(
            session, buyer_server.url, RESERVE, headers, lines=[{"sku": sku, "quantity": 1}]
        )
        assert status == 200 and json.loads(text)["data"]["reserve"]["__typename"] == "Reservation"
