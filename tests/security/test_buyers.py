"""Buyers at the edge, through a real server: buyer tokens that cannot be used are refused
before anything runs, and a buyer's holds and idempotency keys are its own."""

from __future__ import annotations

import base64
import json
import time
import uuid

import aiohttp
import jwt
import pytest

from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.testing.graphql_ws import GraphQLWebSocket, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RELEASE, RESERVE
from tests.support.database import ledger, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV

SECRET = "security-test-buyer-secret-" + "k" * 37  # 64 bytes: HS512 below warns if shorter
TOKENS = BuyerTokens(SECRET)
MAX_PENDING = 3  # INVENTORY_MAX_PENDING_HOLDS_PER_BUYER of the server here


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
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_BUYER_TOKEN_SECRET": SECRET,
        "INVENTORY_MAX_PENDING_HOLDS_PER_BUYER": str(MAX_PENDING),
    }
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
        assert headers["content-type"] == "application/json; charset=utf-8"
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


# --- a buyer's holds and keys are its own ------------------------------------------------

KEYED = """
mutation Reserve($lines: [ReserveLineInput!]!, $key: String) {
  reserve(lines: $lines, idempotencyKey: $key) {
    __typename
    ... on Reservation { id status lines { sku quantity } }
    ... on IdempotencyKeyReused { idempotencyKey }
    ... on Problem { message }
  }
}
"""
READ = "query Read($id: ID!) { reservation(id: $id) { id status } }"
ACTS = {
    "confirm": "mutation Act($id: ID!) { confirm(id: $id) { __typename "
    "... on ReservationNotFound { id message } } }",
    "release": "mutation Act($id: ID!) { release(id: $id) { __typename "
    "... on ReservationNotFound { id message } } }",
    "partial release": "mutation Act($id: ID!, $lines: [ReserveLineInput!]) { release(id: $id, "
    "lines: $lines) { __typename ... on ReservationNotFound { id message } } }",
    "extendReservation": "mutation Act($id: ID!) { extendReservation(id: $id, ttlSeconds: 60) "
    "{ __typename ... on ReservationNotFound { id message } } }",
}
HOLD = "subscription Hold($id: ID!) { reservation(id: $id) { id status } }"


async def call(session, url, query, headers=None, **variables):
    status, _, text = await post(session, url, query, headers, **variables)
    assert status == 200, text
    body = json.loads(text)
    assert "errors" not in body, body
    return body["data"]


async def test_a_buyers_hold_is_invisible_and_untouchable_to_others(
    buyer_server, session, db, make_product
):
    sku = await make_product(5)
    alice, bob = bearer(TOKENS.mint("alice")), bearer(TOKENS.mint("bob"))
    url = buyer_server.url
    line = [{"sku": sku, "quantity": 2}]
    held = (await call(session, url, KEYED, alice, lines=line))["reserve"]
    assert held["__typename"] == "Reservation", held
    before = (await stock(db, sku), await ledger(db, sku))
    unknown = str(uuid.uuid4())

    for other in (bob, None):  # another buyer, and an anonymous caller
        for hold_id in (held["id"], unknown):  # answered alike: nothing tells them apart
            assert (await call(session, url, READ, other, id=hold_id))["reservation"] is None
            for name, act in ACTS.items():
                variables = {"id": hold_id}
                if name == "partial release":
                    variables["lines"] = [{"sku": sku, "quantity": 1}]
                answer = next(iter((await call(session, url, act, other, **variables)).values()))
                assert answer["__typename"] == "ReservationNotFound", (name, answer)
                assert answer["id"] == hold_id
                assert answer["message"] == f"No reservation with id {hold_id!r}."

    assert (await stock(db, sku), await ledger(db, sku)) == before
    for caller in (alice, ADMIN):  # the buyer, and the admin, see it
        seen = (await call(session, url, READ, caller, id=held["id"]))["reservation"]
        assert seen == {"id": held["id"], "status": "PENDING"}
    row = await db.fetchrow(
        "SELECT status::text, buyer FROM reservation WHERE id = $1", uuid.UUID(held["id"])
    )
    assert tuple(row) == ("PENDING", "alice")
    released = (await call(session, url, ACTS["release"], alice, id=held["id"]))["release"]
    assert released["__typename"] == "Reservation"
    assert (await stock(db, sku))["reserved"] == 0


async def test_idempotency_keys_are_per_buyer(buyer_server, session, db, make_product):
    sku, other_sku = await make_product(10), await make_product(10)
    alice, bob = bearer(TOKENS.mint("alice")), bearer(TOKENS.mint("bob"))
    url = buyer_server.url
    replayed, probed = f"order-{uuid.uuid4()}", f"order-{uuid.uuid4()}"
    lines = [{"sku": sku, "quantity": 2}, {"sku": other_sku, "quantity": 1}]

    async def reserve(caller, key, lines):
        return (await call(session, url, KEYED, caller, lines=lines, key=key))["reserve"]

    alices = await reserve(alice, replayed, lines)
    alices_probed = await reserve(alice, probed, [{"sku": sku, "quantity": 1}])
    assert alices["__typename"] == alices_probed["__typename"] == "Reservation"
    # Bob replaying Alice's key with her lines gets a hold of his own, not hers.
    bobs = await reserve(bob, replayed, lines)
    assert bobs["__typename"] == "Reservation" and bobs["id"] != alices["id"], bobs
    # Bob's probe with other lines cannot tell that Alice used the key: he gets a hold.
    probe = await reserve(bob, probed, [{"sku": other_sku, "quantity": 1}])
    assert probe["__typename"] == "Reservation" and probe["id"] != alices_probed["id"], probe
    anonymous = await reserve(None, replayed, lines)  # anonymous callers: a namespace too
    assert anonymous["__typename"] == "Reservation"
    assert anonymous["id"] not in (alices["id"], bobs["id"])
    # Each replaying gets its own hold back (lines in any order), and nothing more is held.
    assert await reserve(alice, replayed, list(reversed(lines))) == alices
    assert await reserve(bob, replayed, lines) == bobs
    assert await reserve(None, replayed, lines) == anonymous

    rows = await db.fetch(
        "SELECT idempotency_key, buyer, id::text FROM reservation"
        " WHERE idempotency_key = any($1::text[])",
        [replayed, probed],
    )
    held = {(key, buyer): rid for key, buyer, rid in rows}
    assert held == {
        (replayed, "alice"): alices["id"],
        (replayed, "bob"): bobs["id"],
        (replayed, None): anonymous["id"],
        (probed, "alice"): alices_probed["id"],
        (probed, "bob"): probe["id"],
    }
    assert (await stock(db, sku))["reserved"] == 3 * 2 + 1
    assert (await stock(db, other_sku))["reserved"] == 3 * 1 + 1


async def test_another_buyers_hold_cannot_be_watched(buyer_server, session, make_product):
    sku = await make_product(5)
    url = buyer_server.url
    alice_token = TOKENS.mint("alice")
    held = (
        await call(session, url, KEYED, bearer(alice_token), lines=[{"sku": sku, "quantity": 1}])
    )["reserve"]
    unknown = str(uuid.uuid4())
    refusals = {}
    for name, payload in (
        ("bob", {"authorization": f"Bearer {TOKENS.mint('bob')}"}),
        ("anonymous", {}),
    ):
        socket = await GraphQLWebSocket.connect(session, url, payload)
        for hold_id in (held["id"], unknown):
            with pytest.raises(SubscriptionError) as refused:
                await (await socket.subscribe(HOLD, id=hold_id)).next()
            refusals[name, hold_id == unknown] = str(refused.value).replace(hold_id, "<id>")
        await socket.close()
    assert set(refusals.values()) == {"unknown reservation: <id>"}, refusals

    # The buyer and an admin watch it, and both see it end.
    watchers = []
    for payload in (
        {"authorization": f"Bearer {alice_token}"},
        {"authorization": ADMIN["Authorization"]},
    ):
        socket = await GraphQLWebSocket.connect(session, url, payload)
        sub = await socket.subscribe(HOLD, id=held["id"])
        assert (await sub.next())["reservation"] == {"id": held["id"], "status": "PENDING"}
        watchers.append((socket, sub))
    await call(session, url, ACTS["release"], bearer(alice_token), id=held["id"])
    for socket, sub in watchers:
        assert (await sub.next())["reservation"] == {"id": held["id"], "status": "RELEASED"}
        await socket.close()


LIMIT = """
mutation Limit($sku: String!, $perBuyer: Int) {
  setPurchaseLimit(sku: $sku, perBuyer: $perBuyer) {
    __typename ... on Product { purchaseLimit waiting } ... on Problem { message }
  }
}
"""
RESERVE_LIMITED = """
mutation Reserve($lines: [ReserveLineInput!]!) {
  reserve(lines: $lines) {
    __typename
    ... on Reservation { id }
    ... on PurchaseLimitExceeded { sku limit alreadyHeld }
    ... on BuyerRequired { sku }
    ... on TooManyPendingHolds { limit }
    ... on Problem { message }
  }
}
"""


async def test_purchase_limits_and_the_pending_hold_cap_through_the_api(
    buyer_server, session, db, make_product
):
    sku = await make_product(10)
    url = buyer_server.url
    buyer = bearer(TOKENS.mint(f"limited-{uuid.uuid4()}"))

    async def reserve(caller, quantity=1):
        lines = [{"sku": sku, "quantity": quantity}]
        answer = (await call(session, url, RESERVE_LIMITED, caller, lines=lines))["reserve"]
        # Every refusal says why in words; the fields are what programs compare.
        assert answer["__typename"] == "Reservation" or answer.pop("message"), answer
        return answer

    # Only the admin sets a limit.
    status, _, text = await post(session, url, LIMIT, buyer, sku=sku, perBuyer=2)
    assert status == 200 and json.loads(text)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert await db.fetchval("SELECT purchase_limit FROM product WHERE sku = $1", sku) is None
    limited = (await call(session, url, LIMIT, ADMIN, sku=sku, perBuyer=2))["setPurchaseLimit"]
    assert limited == {"__typename": "Product", "purchaseLimit": 2, "waiting": 0}

    assert await reserve(None) == {"__typename": "BuyerRequired", "sku": sku}
    first = await reserve(buyer)
    assert first["__typename"] == "Reservation"
    over = await reserve(buyer, 2)
    assert over == {"__typename": "PurchaseLimitExceeded", "sku": sku, "limit": 2, "alreadyHeld": 1}
    # Bought units count as much as held ones.
    bought = (await call(session, url, ACTS["confirm"], buyer, id=first["id"]))["confirm"]
    assert bought["__typename"] == "Reservation"
    second = await reserve(buyer)
    assert second["__typename"] == "Reservation"
    assert (await reserve(buyer))["alreadyHeld"] == 2

    # Null removes the limit; the pending-hold cap still applies.
    removed = (await call(session, url, LIMIT, ADMIN, sku=sku, perBuyer=None))["setPurchaseLimit"]
    assert removed["purchaseLimit"] is None
    more = [await reserve(buyer) for _ in range(MAX_PENDING - 1)]
    assert all(hold["__typename"] == "Reservation" for hold in more)
    assert await reserve(buyer) == {"__typename": "TooManyPendingHolds", "limit": MAX_PENDING}

    # Told equals held: the buyer's holds are the ones it was told of, nothing more.
    told = {second["id"]: "PENDING", first["id"]: "CONFIRMED"} | {
        hold["id"]: "PENDING" for hold in more
    }
    rows = await db.fetch(
        "SELECT r.id::text, r.status::text FROM reservation r JOIN reservation_line l"
        " ON l.reservation_id = r.id JOIN product p ON p.id = l.product_id WHERE p.sku = $1",
        sku,
    )
    assert dict(rows) == told
    assert await stock(db, sku) | {"version": 0} == {
        "quantity": 9,
        "reserved": MAX_PENDING,
        "available": 9 - MAX_PENDING,
        "version": 0,
    }
