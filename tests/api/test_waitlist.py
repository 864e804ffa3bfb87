"""The waiting list over GraphQL/HTTP with buyer tokens: joinWaitlist, leaveWaitlist and
waitlistEntry against a real server and PostgreSQL; every answer compared with the
database at the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest

from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RELEASE, RESERVE
from tests.support.database import check
from tests.support.graphql_http import ADMIN, SERVER_ENV

SECRET = "waitlist-test-secret-of-at-least-32-bytes"

ENTRY_FIELDS = """
    id sku quantity status position createdAt
    reservation { id status expiresAt lines { sku quantity } }
"""
JOIN = f"""
mutation Join($sku: String!, $quantity: Int!) {{
  joinWaitlist(sku: $sku, quantity: $quantity) {{
    __typename
    ... on WaitlistEntry {{ {ENTRY_FIELDS} }}
    ... on ProductNotFound {{ sku }}
    ... on InvalidInput {{ field }}
    ... on PurchaseLimitExceeded {{ sku limit alreadyHeld }}
    ... on BuyerRequired {{ sku }}
    ... on Problem {{ message }}
  }}
}}
"""
LEAVE = f"""
mutation Leave($id: ID!) {{
  leaveWaitlist(id: $id) {{
    __typename
    ... on WaitlistEntry {{ {ENTRY_FIELDS} }}
    ... on WaitlistEntryNotFound {{ id }}
    ... on Problem {{ message }}
  }}
}}
"""
ENTRY = f"query Entry($id: ID!) {{ waitlistEntry(id: $id) {{ __typename {ENTRY_FIELDS} }} }}"
HOLD = "query Hold($id: ID!) { reservation(id: $id) { id status } }"


def token(buyer: str) -> str:
    """A buyer token as the shop's backend mints it."""
    claims = {"sub": buyer, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def buyers_server(database_url: str) -> Iterator[ServerProcess]:
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_BUYER_TOKEN_SECRET": SECRET}
    with ServerProcess(env) as server:
        yield server


class Client:
    """GraphQL over HTTP as one caller: a buyer (its token), the admin, or anonymous."""

    def __init__(self, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        self.http = http
        self.headers = headers

    async def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        body = {"query": query, "variables": variables}
        async with self.http.post("/graphql", json=body, headers=self.headers) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert "errors" not in answer, answer
        data: dict[str, Any] = answer["data"]
        return data


@pytest.fixture
async def http(buyers_server):
    async with aiohttp.ClientSession(buyers_server.url) as session:
        yield session


@pytest.fixture
def as_buyer(http):
    return lambda buyer: Client(http, {"Authorization": f"Bearer {token(buyer)}"})


@pytest.fixture
def admin(http):
    return Client(http, ADMIN)


@pytest.fixture
def anonymous(http):
    return Client(http, {})


async def test_join_wait_get_the_offer_and_leave(as_buyer, admin, anonymous, db, make_product):
    sku = await make_product(2)
    public = (await anonymous(RESERVE, lines=[{"sku": sku, "quantity": 2}]))["reserve"]
    assert public["__typename"] == "Reservation"
    ann, bob, cat = as_buyer("ann"), as_buyer("bob"), as_buyer("cat")

    a = (await ann(JOIN, sku=sku, quantity=2))["joinWaitlist"]
    assert a["__typename"] == "WaitlistEntry"
    assert (a["sku"], a["quantity"], a["status"], a["position"], a["reservation"]) == (
        sku,
        2,
        "WAITING",
        1,
        None,
    )
    b = (await bob(JOIN, sku=sku, quantity=1))["joinWaitlist"]
    c = (await cat(JOIN, sku=sku, quantity=1))["joinWaitlist"]
    assert (b["position"], c["position"]) == (2, 3)
    # A retried join answers the same entry.
    assert (await ann(JOIN, sku=sku, quantity=2))["joinWaitlist"] == a

    # Nobody outside the queue can reserve the sku, even once units come back.
    refused = (await as_buyer("dan")(RESERVE, lines=[{"sku": sku, "quantity": 1}]))["reserve"]
    assert refused == {
        "__typename": "InsufficientStock",
        "sku": sku,
        "requested": 1,
        "available": 0,
        "message": refused["message"],
    }

    # An entry is its buyer's: another buyer and anonymous callers see nothing.
    assert (await bob(ENTRY, id=a["id"]))["waitlistEntry"] is None
    assert (await anonymous(ENTRY, id=a["id"]))["waitlistEntry"] is None
    assert (await bob(LEAVE, id=a["id"]))["leaveWaitlist"] == {
        "__typename": "WaitlistEntryNotFound",
        "id": a["id"],
        "message": f"No waiting-list entry with id {a['id']!r}.",
    }
    assert (await ann(ENTRY, id=a["id"]))["waitlistEntry"] == a

    # The public hold is released: ann's whole quantity fits and she is offered a hold.
    assert (await anonymous(RELEASE, id=public["id"]))["release"]["status"] == "RELEASED"
    offered = (await ann(ENTRY, id=a["id"]))["waitlistEntry"]
    assert (offered["status"], offered["position"]) == ("OFFERED", None)
    hold = offered["reservation"]
    assert (hold["status"], hold["lines"]) == ("PENDING", [{"sku": sku, "quantity": 2}])
    # The hold is ann's own: she can read it; bob cannot.
    assert (await ann(HOLD, id=hold["id"]))["reservation"]["status"] == "PENDING"
    assert (await bob(HOLD, id=hold["id"]))["reservation"] is None
    assert (await bob(ENTRY, id=b["id"]))["waitlistEntry"]["position"] == 1
    # Leaving an offered entry answers it as it is.
    assert (await ann(LEAVE, id=a["id"]))["leaveWaitlist"] == offered

    # bob leaves; cat moves up; leaving twice is safe.
    left = (await bob(LEAVE, id=b["id"]))["leaveWaitlist"]
    assert (left["status"], left["position"], left["reservation"]) == ("LEFT", None, None)
    assert (await bob(LEAVE, id=b["id"]))["leaveWaitlist"] == left
    assert (await cat(ENTRY, id=c["id"]))["waitlistEntry"]["position"] == 1
    # An admin sees every entry.
    assert (await admin(ENTRY, id=c["id"]))["waitlistEntry"]["status"] == "WAITING"

    # Told equals held: the entries and the product's queue as the database has them.
    rows = await db.fetch(
        "SELECT w.id::text, w.buyer, w.status::text, w.reservation_id::text "
        "FROM waitlist_entry w JOIN product p ON p.id = w.product_id WHERE p.sku = $1 "
        "ORDER BY w.seq",
        sku,
    )
    assert [tuple(r) for r in rows] == [
        (a["id"], "ann", "OFFERED", hold["id"]),
        (b["id"], "bob", "LEFT", None),
        (c["id"], "cat", "WAITING", None),
    ]
    assert await db.fetchval("SELECT waiting FROM product WHERE sku = $1", sku) == 1
    assert (await check(db)).ok


async def test_join_refusals(as_buyer, admin, anonymous, db, make_product):
    sku = await make_product(0)
    ann = as_buyer("ann")
    for caller in (anonymous, admin):  # waiting is per buyer
        assert (await caller(JOIN, sku=sku, quantity=1))["joinWaitlist"]["__typename"] == (
            "BuyerRequired"
        )
    missing = (await ann(JOIN, sku="NOPE-none", quantity=1))["joinWaitlist"]
    assert (missing["__typename"], missing["sku"]) == ("ProductNotFound", "NOPE-none")
    zero = (await ann(JOIN, sku=sku, quantity=0))["joinWaitlist"]
    assert (zero["__typename"], zero["field"]) == ("InvalidInput", "quantity")
    malformed = str(uuid.uuid4())[:8]
    assert (await ann(LEAVE, id=malformed))["leaveWaitlist"]["__typename"] == (
        "WaitlistEntryNotFound"
    )
    assert (await ann(ENTRY, id=malformed))["waitlistEntry"] is None

    # The purchase limit applies at join: 2 per buyer, ann already holds 1.
    limited = await make_product(1)
    await db.execute("UPDATE product SET purchase_limit = 2 WHERE sku = $1", limited)
    first = (await ann(JOIN, sku=limited, quantity=1))["joinWaitlist"]
    assert first["status"] == "OFFERED"  # nobody waited and the unit was there
    over = (await ann(JOIN, sku=limited, quantity=2))["joinWaitlist"]
    assert {k: over[k] for k in ("__typename", "sku", "limit", "alreadyHeld")} == {
        "__typename": "PurchaseLimitExceeded",
        "sku": limited,
        "limit": 2,
        "alreadyHeld": 1,
    }
    assert (await ann(JOIN, sku=limited, quantity=1))["joinWaitlist"]["position"] == 1
    rows = await db.fetch(
        "SELECT w.status::text FROM waitlist_entry w JOIN product p ON p.id = w.product_id "
        "WHERE p.sku = any($1::text[]) ORDER BY w.seq",
        [sku, limited],
    )
    assert [r[0] for r in rows] == ["OFFERED", "WAITING"]
    assert (await check(db)).ok
