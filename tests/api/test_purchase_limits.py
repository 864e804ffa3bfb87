"""Purchase limits and per-buyer caps through real server processes on one database.

The issue's acceptance: one buyer racing 200 reserves of a limited sku through two
`serve` processes (coalesced, and one transaction per request) gets exactly the limit,
and every other answer is PurchaseLimitExceeded with the numbers that were true; carts
mixing limited and unlimited skus are held whole or not at all. Every test ends by
comparing what the buyer was told with what the database holds, and with `check`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from inventory_graphql.testing.server import ServerProcess
from tests.support.database import check, ledger, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV

# What the shop's backend shares with the service; tokens are minted the way a shop
# would (PyJWT, HS256, `sub` and `exp`), independently of the service's own helper.
SECRET = "purchase-limit-test-secret-" + "s" * 37

RESERVE = """
mutation Reserve($lines: [ReserveLineInput!]!, $ttl: Int) {
  reserve(lines: $lines, ttlSeconds: $ttl) {
    __typename
    ... on Reservation { id status lines { sku quantity } }
    ... on PurchaseLimitExceeded { sku limit alreadyHeld }
    ... on BuyerRequired { sku }
    ... on TooManyPendingHolds { limit }
    ... on InsufficientStock { sku requested available }
    ... on InvalidInput { field }
    ... on Problem { message }
  }
}
"""

RESOLVED = "__typename ... on Reservation { id status } ... on Problem { message }"
CONFIRM = f"mutation Confirm($id: ID!) {{ confirm(id: $id) {{ {RESOLVED} }} }}"
RELEASE = f"""
mutation Release($id: ID!, $lines: [ReserveLineInput!]) {{
  release(id: $id, lines: $lines) {{ {RESOLVED} }}
}}
"""
SET_LIMIT = """
mutation Limit($sku: String!, $perBuyer: Int) {
  setPurchaseLimit(sku: $sku, perBuyer: $perBuyer) {
    __typename ... on Product { sku purchaseLimit } ... on Problem { message }
  }
}
"""

# Every hold of one buyer (any product), with its lines, as the database has it.
BUYER_HOLDS = """
SELECT r.id::text AS id, r.status::text AS status,
       array_agg(p.sku || ':' || l.quantity ORDER BY p.sku) AS lines
FROM reservation r
JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
WHERE r.buyer = $1
GROUP BY r.id
"""

Lines = list[tuple[str, int]]


def buyer_token(buyer: str, seconds: int = 600) -> dict[str, str]:
    claims = {"sub": buyer, "exp": int(time.time()) + seconds}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, 'HS256')}"}


def new_buyer() -> str:
    return f"buyer-{uuid.uuid4().hex[:10]}"


def start_pair(env: dict[str, str], log_dir: Any) -> Iterator[list[ServerProcess]]:
    """Two server processes on one database, as behind a load balancer."""
    servers = [ServerProcess(env, log=log_dir / f"log{i}") for i in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        assert [server.stop() for server in servers] == [0, 0]


@pytest.fixture(scope="module")
def coalesced(database_url, tmp_path_factory):
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_BUYER_TOKEN_SECRET": SECRET}
    yield from start_pair(env, tmp_path_factory.mktemp("coalesced"))


@pytest.fixture(scope="module")
def per_request(database_url, tmp_path_factory):
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_BUYER_TOKEN_SECRET": SECRET,
        "INVENTORY_COALESCE_RESERVATIONS": "off",
    }
    yield from start_pair(env, tmp_path_factory.mktemp("per-request"))


@pytest.fixture(scope="module")
def capped(database_url, tmp_path_factory):
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_BUYER_TOKEN_SECRET": SECRET,
        "INVENTORY_MAX_PENDING_HOLDS_PER_BUYER": "3",
        "INVENTORY_MAX_UNITS_PER_LINE": "5",
    }
    yield from start_pair(env, tmp_path_factory.mktemp("capped"))


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    ) as s:
        yield s


async def call(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    query: str,
    headers: dict[str, str] | None = None,
    **variables: Any,
) -> dict[str, Any]:
    """One GraphQL POST; the mutation's union member (any error fails the test)."""
    body = {"query": query, "variables": variables}
    async with session.post(f"{server.url}/graphql", json=body, headers=headers) as response:
        answer = await response.json()
    assert response.status == 200 and "errors" not in answer, answer
    (member,) = answer["data"].values()
    assert isinstance(member, dict)
    return member


async def reserve(
    session: aiohttp.ClientSession,
    server: ServerProcess,
    lines: Lines,
    headers: dict[str, str] | None = None,
    ttl: int | None = None,
) -> dict[str, Any]:
    cart = [{"sku": sku, "quantity": quantity} for sku, quantity in lines]
    variables: dict[str, Any] = {"lines": cart}
    if ttl is not None:
        variables["ttl"] = ttl
    return await call(session, server, RESERVE, headers, **variables)


async def limit(
    session: aiohttp.ClientSession, server: ServerProcess, sku: str, per_buyer: int | None
) -> None:
    answer = await call(session, server, SET_LIMIT, ADMIN, sku=sku, perBuyer=per_buyer)
    assert answer == {"__typename": "Product", "sku": sku, "purchaseLimit": per_buyer}


async def held_by(db: asyncpg.Connection, buyer: str) -> dict[str, tuple[str, list[str]]]:
    """The buyer's holds in the database: id -> (status, ["sku:quantity", ...])."""
    return {r["id"]: (r["status"], list(r["lines"])) for r in await db.fetch(BUYER_HOLDS, buyer)}


def told(answers: list[dict[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """The holds the buyer was told about, in the same shape."""
    return {
        a["id"]: (a["status"], sorted(f"{line['sku']}:{line['quantity']}" for line in a["lines"]))
        for a in answers
        if a["__typename"] == "Reservation"
    }


# ---------------------------------------------------------------- the acceptance


@pytest.mark.parametrize("mode", ["coalesced", "per_request"])
async def test_one_buyer_racing_200_reserves_through_two_processes_gets_exactly_the_limit(
    mode, request, session, db, make_product
):
    servers = request.getfixturevalue(mode)
    sku = await make_product(1000)
    await limit(session, servers[0], sku, 2)
    buyer = new_buyer()
    headers = buyer_token(buyer)

    answers = await asyncio.gather(
        *(reserve(session, servers[i % 2], [(sku, 1)], headers) for i in range(200))
    )

    kinds = Counter(a["__typename"] for a in answers)
    assert kinds == {"Reservation": 2, "PurchaseLimitExceeded": 198}
    # Each refusal says why with the numbers that were true under the row lock: the two
    # units were held then (nothing of this buyer's was released in between).
    refusals = [a for a in answers if a["__typename"] == "PurchaseLimitExceeded"]
    assert {(a["sku"], a["limit"], a["alreadyHeld"]) for a in refusals} == {(sku, 2, 2)}
    assert all("2" in a["message"] for a in refusals)
    # Told equals held: the two holds told are exactly the buyer's holds in the database.
    assert await held_by(db, buyer) == told(answers) != {}
    assert (await stock(db, sku))["reserved"] == 2
    assert await ledger(db, sku) == [("CREATE", 1000, 0), ("RESERVE", 0, 1), ("RESERVE", 0, 1)]
    assert (await check(db)).ok


@pytest.mark.parametrize("mode", ["coalesced", "per_request"])
async def test_carts_mixing_limited_and_unlimited_skus_are_held_whole_within_the_limit(
    mode, request, session, db, make_product
):
    servers = request.getfixturevalue(mode)
    limited, unlimited = await make_product(1000), await make_product(1000)
    await limit(session, servers[1], limited, 2)
    buyer = new_buyer()
    headers = buyer_token(buyer)
    # 200 carts with one unit of each, and 100 carts of the unlimited sku alone, racing.
    both: Lines = [(limited, 1), (unlimited, 1)]
    order = [[(unlimited, 1)] if i % 3 == 2 else both for i in range(300)]

    answers = await asyncio.gather(
        *(reserve(session, servers[i % 2], cart, headers) for i, cart in enumerate(order))
    )

    mixed = Counter(
        a["__typename"] for a, cart in zip(answers, order, strict=True) if len(cart) > 1
    )
    alone = Counter(
        a["__typename"] for a, cart in zip(answers, order, strict=True) if len(cart) == 1
    )
    assert mixed == {"Reservation": 2, "PurchaseLimitExceeded": 198}
    assert alone == {"Reservation": 100}  # the limit binds only the limited sku
    refusals = {
        (a["sku"], a["limit"], a["alreadyHeld"])
        for a in answers
        if a["__typename"] == "PurchaseLimitExceeded"
    }
    assert refusals == {(limited, 2, 2)}
    # A refused cart held nothing, not even its unlimited line.
    assert (await stock(db, limited))["reserved"] == 2
    assert (await stock(db, unlimited))["reserved"] == 102
    assert await held_by(db, buyer) == told(answers)
    assert Counter(kind for kind, _, _ in await ledger(db, unlimited)) == {
        "CREATE": 1,
        "RESERVE": 102,
    }
    assert (await check(db)).ok


# ---------------------------------------------------------------- what counts


async def test_a_limited_sku_without_a_buyer_answers_buyer_required_and_changes_nothing(
    coalesced, session, db, make_product
):
    limited, unlimited = await make_product(10), await make_product(10)
    await limit(session, coalesced[0], limited, 2)
    before = await stock(db, limited), await stock(db, unlimited)

    alone, cart = await asyncio.gather(
        reserve(session, coalesced[0], [(limited, 1)]),
        reserve(session, coalesced[1], [(unlimited, 1), (limited, 1)]),
    )

    assert alone == {"__typename": "BuyerRequired", "sku": limited, "message": alone["message"]}
    assert cart["__typename"] == "BuyerRequired" and cart["sku"] == limited
    assert (await stock(db, limited), await stock(db, unlimited)) == before
    assert await ledger(db, limited) == [("CREATE", 10, 0)]
    assert await ledger(db, unlimited) == [("CREATE", 10, 0)]
    # Anonymous callers still reserve what has no limit, as before buyers existed.
    anonymous = await reserve(session, coalesced[0], [(unlimited, 1)])
    assert anonymous["__typename"] == "Reservation"
    assert (await check(db)).ok


async def test_bought_units_count_toward_the_limit_in_every_process(
    coalesced, session, db, make_product
):
    sku = await make_product(10)
    await limit(session, coalesced[0], sku, 2)
    buyer = new_buyer()
    headers = buyer_token(buyer)

    hold = await reserve(session, coalesced[0], [(sku, 2)], headers)
    assert hold["__typename"] == "Reservation"
    bought = await call(session, coalesced[1], CONFIRM, headers, id=hold["id"])
    assert bought == {"__typename": "Reservation", "id": hold["id"], "status": "CONFIRMED"}
    more = await reserve(session, coalesced[1], [(sku, 1)], headers)

    assert more["__typename"] == "PurchaseLimitExceeded"
    assert (more["limit"], more["alreadyHeld"]) == (2, 2)
    # The limit is per buyer: someone else still gets theirs.
    other = await reserve(session, coalesced[0], [(sku, 2)], buyer_token(new_buyer()))
    assert other["__typename"] == "Reservation"
    assert await held_by(db, buyer) == {hold["id"]: ("CONFIRMED", [f"{sku}:2"])}
    after = await stock(db, sku)
    assert (after["quantity"], after["reserved"]) == (8, 2)
    assert (await check(db)).ok


async def test_released_and_expired_units_stop_counting(coalesced, session, db, make_product):
    sku = await make_product(10)
    await limit(session, coalesced[0], sku, 2)
    buyer = new_buyer()
    headers = buyer_token(buyer)
    a, b = coalesced

    first = await reserve(session, a, [(sku, 2)], headers)
    released = await call(session, b, RELEASE, headers, id=first["id"])
    assert released["status"] == "RELEASED"
    second = await reserve(session, b, [(sku, 2)], headers, ttl=1)
    assert second["__typename"] == "Reservation"
    # The sweepers (every 0.2 s here) expire it a moment after its second is up.
    deadline = time.monotonic() + 10
    while (await held_by(db, buyer))[second["id"]][0] == "PENDING":
        assert time.monotonic() < deadline, "the hold was never expired"
        await asyncio.sleep(0.1)
    third = await reserve(session, a, [(sku, 2)], headers)
    assert third["__typename"] == "Reservation"
    refused = await reserve(session, b, [(sku, 1)], headers)
    assert (refused["__typename"], refused["alreadyHeld"]) == ("PurchaseLimitExceeded", 2)
    # A unit given back from a hold that stays PENDING stops counting too.
    part = await call(
        session, a, RELEASE, headers, id=third["id"], lines=[{"sku": sku, "quantity": 1}]
    )
    assert part["status"] == "PENDING"
    fourth = await reserve(session, b, [(sku, 1)], headers)
    assert fourth["__typename"] == "Reservation"

    assert await held_by(db, buyer) == {
        first["id"]: ("RELEASED", [f"{sku}:2"]),
        second["id"]: ("EXPIRED", [f"{sku}:2"]),
        third["id"]: ("PENDING", [f"{sku}:2"]),
        fourth["id"]: ("PENDING", [f"{sku}:1"]),
    }
    assert (await stock(db, sku))["reserved"] == 2
    assert (await check(db)).ok


# ---------------------------------------------------------------- caps for everyone


async def test_pending_holds_per_buyer_are_capped_across_processes(
    capped, session, db, make_product
):
    skus = [await make_product(5) for _ in range(21)]
    buyer = new_buyer()
    headers = buyer_token(buyer)

    answers = await asyncio.gather(
        *(reserve(session, capped[i % 2], [(sku, 1)], headers) for i, sku in enumerate(skus[:20]))
    )

    kinds = Counter(a["__typename"] for a in answers)
    assert kinds == {"Reservation": 3, "TooManyPendingHolds": 17}
    assert {a["limit"] for a in answers if a["__typename"] == "TooManyPendingHolds"} == {3}
    assert await held_by(db, buyer) == told(answers)
    # Only PENDING holds count: once one is confirmed, one more may be held.
    held = [a for a in answers if a["__typename"] == "Reservation"]
    await call(session, capped[1], CONFIRM, headers, id=held[0]["id"])
    again = await reserve(session, capped[0], [(skus[20], 1)], headers)
    assert again["__typename"] == "Reservation"
    # Another buyer has a cap of its own.
    other = await reserve(session, capped[1], [(skus[20], 1)], buyer_token(new_buyer()))
    assert other["__typename"] == "Reservation"
    assert sum(status == "PENDING" for status, _ in (await held_by(db, buyer)).values()) == 3
    assert sum([(await stock(db, sku))["reserved"] for sku in skus]) == 4
    assert (await check(db)).ok


async def test_a_line_above_the_units_per_line_cap_is_invalid_input(
    capped, session, db, make_product
):
    sku = await make_product(100)

    six = await reserve(session, capped[0], [(sku, 6)], buyer_token(new_buyer()))
    five = await reserve(session, capped[1], [(sku, 5)])

    assert six["__typename"] == "InvalidInput" and six["field"] == "lines[0].quantity"
    assert "5" in six["message"]
    assert five["__typename"] == "Reservation"
    assert (await stock(db, sku))["reserved"] == 5
    assert (await check(db)).ok
