"""Safe admin writes through a real server: idempotency keys (replayed answers, concurrent
retries applied once), compare-and-set against the product's version, stock counts, bulk
adjustments all or nothing, and who/why/reference on every ledger row and stock event."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from inventory_graphql.inventory.catalog import CREATE
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import CONFIRM, RELEASE, RESERVE
from tests.support.database import check, ledger, new_sku, stock
from tests.support.graphql_http import ADMIN_TOKEN, SERVER_ENV, GraphQLClient

ANN_TOKEN = "ann-token-0123456789abcdef"
BOB_TOKEN = "bob-token-0123456789abcdef"

PRODUCT = "sku quantity reserved available version updatedAt"
BULK_PROBLEMS = """
    ... on ProductNotFound { sku }
    ... on InvalidInput { field }
    ... on VersionConflict { sku expectedVersion actualVersion }
    ... on IdempotencyKeyReused { idempotencyKey }
    ... on Problem { message }
"""
PROBLEMS = BULK_PROBLEMS + "... on QuantityBelowReserved { sku quantity reserved }"

ADJUST = f"""
mutation Adjust($sku: String!, $delta: Int!, $reason: String!, $key: String,
                $expected: Int, $reference: String) {{
  adjustStock(sku: $sku, delta: $delta, reason: $reason, idempotencyKey: $key,
              expectedVersion: $expected, reference: $reference) {{
    __typename ... on Product {{ {PRODUCT} }} {PROBLEMS}
  }}
}}
"""

SET = f"""
mutation Set($sku: String!, $quantity: Int!, $reason: String!, $key: String,
             $expected: Int, $reference: String) {{
  setStock(sku: $sku, quantity: $quantity, reason: $reason, idempotencyKey: $key,
           expectedVersion: $expected, reference: $reference) {{
    __typename ... on Product {{ {PRODUCT} }} {PROBLEMS}
  }}
}}
"""

BULK = f"""
mutation Bulk($adjustments: [StockAdjustmentInput!]!, $key: String) {{
  adjustStocks(adjustments: $adjustments, idempotencyKey: $key) {{
    __typename ... on AdjustedProducts {{ products {{ sku quantity version }} }} {BULK_PROBLEMS}
  }}
}}
"""


class Admin:
    """A client with one admin token (named or not)."""

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"}

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        body = {"query": query, "variables": variables}
        async with self.http.post("/graphql", json=body, headers=self.headers) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert "errors" not in answer, answer
        data: dict[str, Any] = answer["data"]
        return data


@pytest.fixture(scope="module")
def named_server(database_url: str) -> Iterator[ServerProcess]:
    """A second server process with named admin tokens beside the single one."""
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_ADMIN_TOKENS": f"ann:{ANN_TOKEN}, bob:{BOB_TOKEN}",
    }
    with ServerProcess(env) as proc:
        yield proc


async def _session(url: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        url,
        connector=aiohttp.TCPConnector(limit=64),
        timeout=aiohttp.ClientTimeout(total=60),
    )


@pytest.fixture
async def admins(named_server: ServerProcess) -> AsyncIterator[dict[str, Admin]]:
    """ann, bob and the single token ("admin") on the named server."""
    http = await _session(named_server.url)
    async with http:
        yield {
            "ann": Admin(http, ANN_TOKEN),
            "bob": Admin(http, BOB_TOKEN),
            "admin": Admin(http, ADMIN_TOKEN),
        }


def _key() -> str:
    return f"restock-{uuid.uuid4()}"


async def _movements(db: asyncpg.Connection, sku: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT m.id, m.kind::text AS kind, m.quantity_delta, m.reason, m.reference, m.actor "
        "FROM stock_movement m JOIN product p ON p.id = m.product_id WHERE p.sku = $1 "
        "ORDER BY m.id",
        sku,
    )
    return [dict(r) for r in rows]


async def _events(db: asyncpg.Connection, sku: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT e.id, e.kind::text AS kind, e.quantity_delta, e.quantity, e.version, "
        "e.reason, e.reference, e.actor "
        "FROM stock_event e JOIN product p ON p.id = e.product_id WHERE p.sku = $1 "
        "AND e.quantity_delta <> 0 ORDER BY e.id",
        sku,
    )
    return [dict(r) for r in rows]


async def _state(db: asyncpg.Connection, *skus: str) -> list[Any]:
    """Everything a refused write must leave as it was: numbers, ledger, events."""
    return [(await stock(db, s), await _movements(db, s), await _events(db, s)) for s in skus]


# --- idempotency ------------------------------------------------------------------------


async def test_a_retried_adjustment_applies_once_and_replays_the_first_answer(
    gql: GraphQLClient, db: asyncpg.Connection, make_product: Any
) -> None:
    sku, key = await make_product(10), _key()
    args = {"sku": sku, "delta": 50, "reason": "restock", "key": key, "reference": "PO-1"}
    first = (await gql.execute(ADJUST, **args))["adjustStock"]
    assert first["__typename"] == "Product" and first["quantity"] == 60

    # The product moves on; a retry still answers what the first request was told.
    await gql.execute(ADJUST, sku=sku, delta=-5, reason="damaged")
    for _ in range(3):
        assert (await gql.execute(ADJUST, **args))["adjustStock"] == first

    assert (await stock(db, sku))["quantity"] == 55
    assert [(m["kind"], m["quantity_delta"]) for m in await _movements(db, sku)] == [
        ("CREATE", 10),
        ("ADJUST", 50),
        ("ADJUST", -5),
    ]


async def test_20_concurrent_retries_through_two_processes_apply_once(
    gql: GraphQLClient, admins: dict[str, Admin], db: asyncpg.Connection, make_product: Any
) -> None:
    # The single token is "admin" in both processes: one key, one actor, two servers.
    sku, key = await make_product(0), _key()
    args = {"sku": sku, "delta": 7, "reason": "restock", "key": key}
    senders: list[GraphQLClient | Admin] = [gql, admins["admin"]] * 10

    answers = await asyncio.gather(*(s.execute(ADJUST, **args) for s in senders))

    results = [a["adjustStock"] for a in answers]
    assert Counter(r["__typename"] for r in results) == {"Product": 20}
    assert all(r == results[0] for r in results), results
    assert (await stock(db, sku))["quantity"] == 7
    assert await ledger(db, sku) == [("CREATE", 0, 0), ("ADJUST", 7, 0)]
    assert results[0]["version"] == (await stock(db, sku))["version"]


async def test_same_key_with_other_arguments_or_operation_is_refused(
    gql: GraphQLClient, db: asyncpg.Connection, make_product: Any
) -> None:
    sku, key = await make_product(10), _key()
    await gql.execute(ADJUST, sku=sku, delta=5, reason="restock", key=key)
    before = await _state(db, sku)

    other_delta = await gql.execute(ADJUST, sku=sku, delta=6, reason="restock", key=key)
    other_reference = await gql.execute(
        ADJUST, sku=sku, delta=5, reason="restock", key=key, reference="PO-2"
    )
    other_operation = await gql.execute(SET, sku=sku, quantity=15, reason="restock", key=key)
    bulk = await gql.execute(
        BULK, adjustments=[{"sku": sku, "delta": 5, "reason": "restock"}], key=key
    )

    for answer in (
        other_delta["adjustStock"],
        other_reference["adjustStock"],
        other_operation["setStock"],
        bulk["adjustStocks"],
    ):
        assert answer["__typename"] == "IdempotencyKeyReused", answer
        assert answer["idempotencyKey"] == key and "adjustStock" in answer["message"]
    assert await _state(db, sku) == before


async def test_keys_belong_to_their_admin(
    admins: dict[str, Admin], db: asyncpg.Connection, make_product: Any
) -> None:
    sku, key = await make_product(0), _key()
    ann = await admins["ann"].execute(ADJUST, sku=sku, delta=1, reason="r", key=key)
    # bob's key of the same text is another key: his own adjustment applies.
    bob = await admins["bob"].execute(ADJUST, sku=sku, delta=2, reason="r", key=key)
    assert ann["adjustStock"]["quantity"] == 1 and bob["adjustStock"]["quantity"] == 3
    assert [(m["quantity_delta"], m["actor"]) for m in await _movements(db, sku)][1:] == [
        (1, "ann"),
        (2, "bob"),
    ]


async def test_a_refusal_is_the_answer_its_key_keeps(
    gql: GraphQLClient, db: asyncpg.Connection, make_product: Any
) -> None:
    sku, key = await make_product(5), _key()
    hold = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 4}]))["reserve"]
    args = {"sku": sku, "quantity": 3, "reason": "count", "key": key}
    refused = (await gql.execute(SET, **args))["setStock"]
    assert refused["__typename"] == "QuantityBelowReserved"
    assert (refused["quantity"], refused["reserved"]) == (3, 4)
    await gql.execute(RELEASE, id=hold["id"])
    before = await _state(db, sku)
    # Stored under the key (as Stripe does): a retry is told the same, even now that the
    # count would pass. One key, one answer; another count takes another key.
    assert (await gql.execute(SET, **args))["setStock"] == refused
    assert await _state(db, sku) == before
    assert (
        await db.fetchval(
            "SELECT answer->>'type' FROM admin_write_key WHERE actor = 'admin' AND key = $1", key
        )
        == "QuantityBelowReserved"
    )


RELEASE_PART = """
mutation Part($id: ID!, $lines: [ReserveLineInput!]) {
  release(id: $id, lines: $lines) { __typename }
}
"""


async def test_an_admin_ending_a_hold_is_named_on_its_ledger_rows(
    admins: dict[str, Admin], named_server: ServerProcess, db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(10)
    ann, bob = admins["ann"], admins["bob"]
    first = (await ann.execute(RESERVE, lines=[{"sku": sku, "quantity": 3}]))["reserve"]
    second = (await ann.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}]))["reserve"]

    assert (await ann.execute(CONFIRM, id=first["id"]))["confirm"]["__typename"] == "Reservation"
    part = await bob.execute(RELEASE_PART, id=second["id"], lines=[{"sku": sku, "quantity": 1}])
    assert part["release"]["__typename"] == "Reservation"
    # The rest by a shopper's client (no token): nobody to name.
    async with await _session(named_server.url) as http:
        body = {"query": RELEASE, "variables": {"id": second["id"]}}
        async with http.post("/graphql", json=body) as response:
            answer = await response.json()
    assert answer["data"]["release"]["status"] == "RELEASED", answer

    movements = [(m["kind"], m["actor"]) for m in await _movements(db, sku)]
    assert movements == [
        ("CREATE", None),
        ("RESERVE", None),
        ("RESERVE", None),
        ("CONFIRM", "ann"),
        ("RELEASE", "bob"),
        ("RELEASE", None),
    ]
    events = await db.fetch(
        "SELECT e.kind::text, e.actor FROM stock_event e JOIN product p ON p.id = e.product_id "
        "WHERE p.sku = $1 AND e.kind IN ('CONFIRMED', 'RELEASED') ORDER BY e.id",
        sku,
    )
    assert [tuple(e) for e in events] == [
        ("CONFIRMED", "ann"),
        ("RELEASED", "bob"),
        ("RELEASED", None),
    ]


# --- compare-and-set --------------------------------------------------------------------


async def test_two_admins_racing_from_one_stale_version_one_wins_each_round(
    admins: dict[str, Admin], db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(100)
    deltas = {"ann": 1, "bob": 10}  # who won is readable in the quantity, too
    winners: list[str] = []
    for _ in range(15):
        version = (await stock(db, sku))["version"]
        answers = await asyncio.gather(
            *(
                admins[name].execute(
                    ADJUST, sku=sku, delta=delta, reason=f"{name} restock", expected=version
                )
                for name, delta in deltas.items()
            )
        )
        results = dict(zip(deltas, (a["adjustStock"] for a in answers), strict=True))
        won = [n for n, r in results.items() if r["__typename"] == "Product"]
        assert len(won) == 1, results
        winner, loser = won[0], next(n for n in deltas if n != won[0])
        conflict = results[loser]
        assert conflict["__typename"] == "VersionConflict", conflict
        assert conflict["sku"] == sku and conflict["expectedVersion"] == version
        assert conflict["actualVersion"] == results[winner]["version"] == version + 1
        winners.append(winner)

    # Told equals held: the numbers, the ledger and the events are the winners' alone.
    assert (await stock(db, sku))["quantity"] == 100 + sum(deltas[w] for w in winners)
    movements = (await _movements(db, sku))[1:]
    assert [(m["actor"], m["quantity_delta"], m["reason"]) for m in movements] == [
        (w, deltas[w], f"{w} restock") for w in winners
    ]
    events = (await _events(db, sku))[1:]
    assert [(e["id"], e["kind"], e["actor"]) for e in events] == [
        (m["id"], "ADJUSTED", m["actor"]) for m in movements
    ]
    assert (await check(db)).ok


async def test_a_stale_version_changes_nothing(
    gql: GraphQLClient, db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(10)
    version = (await stock(db, sku))["version"]
    await gql.execute(ADJUST, sku=sku, delta=1, reason="restock")
    before = await _state(db, sku)
    for document, field, args in (
        (ADJUST, "adjustStock", {"delta": 5}),
        (SET, "setStock", {"quantity": 3}),
    ):
        answer = await gql.execute(document, sku=sku, reason="r", expected=version, **args)
        assert answer[field]["__typename"] == "VersionConflict"
        assert answer[field]["actualVersion"] == version + 1
    assert await _state(db, sku) == before
    current = await gql.execute(ADJUST, sku=sku, delta=5, reason="r", expected=version + 1)
    assert current["adjustStock"]["quantity"] == 16


# --- setStock ---------------------------------------------------------------------------


async def test_set_stock_writes_a_set_row_with_the_delta(
    admins: dict[str, Admin], db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(40)
    ann = admins["ann"]
    counted = await ann.execute(SET, sku=sku, quantity=37, reason="count", reference="C-9")
    assert counted["setStock"]["quantity"] == 37
    up = (await ann.execute(SET, sku=sku, quantity=45, reason="count"))["setStock"]
    assert up["quantity"] == 45
    movements = (await _movements(db, sku))[1:]
    assert [
        (m["kind"], m["quantity_delta"], m["reason"], m["reference"], m["actor"]) for m in movements
    ] == [
        ("SET", -3, "count", "C-9", "ann"),
        ("SET", 8, "count", None, "ann"),
    ]
    events = (await _events(db, sku))[1:]
    assert [
        (e["kind"], e["quantity_delta"], e["quantity"], e["reference"], e["actor"]) for e in events
    ] == [
        ("SET", -3, 37, "C-9", "ann"),
        ("SET", 8, 45, None, "ann"),
    ]
    assert (await check(db)).ok


async def test_set_stock_below_reserved_is_refused_and_changes_nothing(
    gql: GraphQLClient, db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(10)
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 6}])
    before = await _state(db, sku)
    refused = (await gql.execute(SET, sku=sku, quantity=5, reason="count"))["setStock"]
    assert refused["__typename"] == "QuantityBelowReserved"
    assert (refused["sku"], refused["quantity"], refused["reserved"]) == (sku, 5, 6)
    assert await _state(db, sku) == before
    # Exactly what is reserved is a valid count: nothing left available.
    assert (await gql.execute(SET, sku=sku, quantity=6, reason="count"))["setStock"][
        "available"
    ] == 0


# --- adjustStocks -----------------------------------------------------------------------


async def test_adjust_stocks_is_all_or_nothing_and_names_the_refused_item(
    gql: GraphQLClient, db: asyncpg.Connection, make_product: Any
) -> None:
    a, b, c = sorted([await make_product(10) for _ in range(3)])
    await gql.execute(RESERVE, lines=[{"sku": b, "quantity": 8}])
    before = await _state(db, a, b, c)

    def items(**changes: Any) -> list[dict[str, Any]]:
        base = [{"sku": s, "delta": 1, "reason": "count"} for s in (c, b, a)]
        for i, change in changes.items():
            base[int(i[1:])].update(change)
        return base

    below = (await gql.execute(BULK, adjustments=items(i1={"delta": -3})))["adjustStocks"]
    assert below["__typename"] == "InvalidInput" and below["field"] == "adjustments[1].delta"
    assert b in below["message"]
    missing = (await gql.execute(BULK, adjustments=items(i2={"sku": "NOPE-1"})))["adjustStocks"]
    assert (missing["__typename"], missing["sku"]) == ("ProductNotFound", "NOPE-1")
    stale = await gql.execute(BULK, adjustments=items(i0={"expectedVersion": 99}))
    assert stale["adjustStocks"]["__typename"] == "VersionConflict"
    assert stale["adjustStocks"]["sku"] == c
    twice = (await gql.execute(BULK, adjustments=items(i2={"sku": c})))["adjustStocks"]
    assert twice["__typename"] == "InvalidInput" and twice["field"] == "adjustments[2].sku"
    assert await _state(db, a, b, c) == before

    key = _key()
    done = await gql.execute(BULK, adjustments=items(i1={"delta": -2}), key=key)
    assert [(p["sku"], p["quantity"]) for p in done["adjustStocks"]["products"]] == [
        (a, 11),
        (b, 8),
        (c, 11),
    ]
    again = await gql.execute(BULK, adjustments=items(i1={"delta": -2}), key=key)
    assert again == done
    assert [(await stock(db, s))["quantity"] for s in (a, b, c)] == [11, 8, 11]
    assert (await check(db)).ok


async def test_adjust_stocks_takes_1000_products_and_refuses_1001(
    gql: GraphQLClient, db: asyncpg.Connection
) -> None:
    skus = sorted(new_sku("B") for _ in range(1001))
    await db.executemany(CREATE, [(s, "Bulk", 5) for s in skus])
    items = [{"sku": s, "delta": 2, "reason": "restock"} for s in skus]

    refused = (await gql.execute(BULK, adjustments=items))["adjustStocks"]
    assert refused["__typename"] == "InvalidInput" and refused["field"] == "adjustments"
    done = (await gql.execute(BULK, adjustments=items[:1000]))["adjustStocks"]
    assert len(done["products"]) == 1000
    rows = await db.fetch(
        "SELECT p.sku, p.quantity, count(m.id) FILTER (WHERE m.kind = 'ADJUST') AS adjusted "
        "FROM product p JOIN stock_movement m ON m.product_id = p.id "
        "WHERE p.sku = any($1::text[]) GROUP BY p.id ORDER BY p.sku",
        skus,
    )
    assert [(r["quantity"], r["adjusted"]) for r in rows] == [(7, 1)] * 1000 + [(5, 0)]


# --- input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field", "args", "refused_field"),
    [
        (ADJUST, "adjustStock", {"delta": 0}, "delta"),
        (ADJUST, "adjustStock", {"delta": 1, "reason": "r" * 501}, "reason"),
        (ADJUST, "adjustStock", {"delta": 1, "reference": "x" * 256}, "reference"),
        (ADJUST, "adjustStock", {"delta": 1, "reference": " "}, "reference"),
        (ADJUST, "adjustStock", {"delta": 1, "key": "k" * 256}, "idempotencyKey"),
        (ADJUST, "adjustStock", {"delta": 1, "key": "a\x00b"}, "idempotencyKey"),
        (ADJUST, "adjustStock", {"delta": 1, "expected": 0}, "expectedVersion"),
        (SET, "setStock", {"quantity": -1}, "quantity"),
        (SET, "setStock", {"quantity": 1_000_000_001}, "quantity"),
        (SET, "setStock", {"quantity": 1, "reason": " "}, "reason"),
    ],
)
async def test_bad_input_is_typed_and_changes_nothing(
    gql: GraphQLClient,
    db: asyncpg.Connection,
    make_product: Any,
    document: str,
    field: str,
    args: dict[str, Any],
    refused_field: str,
) -> None:
    sku = await make_product(10)
    before = await _state(db, sku)
    keys = await db.fetchval("SELECT count(*) FROM admin_write_key")
    answer = (await gql.execute(document, **{"sku": sku, "reason": "r", **args}))[field]
    assert answer["__typename"] == "InvalidInput" and answer["field"] == refused_field, answer
    assert await _state(db, sku) == before
    assert await db.fetchval("SELECT count(*) FROM admin_write_key") == keys


async def test_bulk_items_bad_input_names_the_item(gql: GraphQLClient) -> None:
    items = [
        {"sku": new_sku(), "delta": 1, "reason": "r"},
        {"sku": "bad sku", "delta": 1, "reason": "r"},
    ]
    answer = (await gql.execute(BULK, adjustments=items))["adjustStocks"]
    assert answer["__typename"] == "InvalidInput" and answer["field"] == "adjustments[1].sku"
    empty = (await gql.execute(BULK, adjustments=[]))["adjustStocks"]
    assert empty["__typename"] == "InvalidInput" and empty["field"] == "adjustments"
