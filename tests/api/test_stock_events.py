"""The stock event feed over GraphQL (query and subscription) and setLowStockThreshold,
through real server processes, real HTTP and WebSockets, and real PostgreSQL. Each
server here has a database of its own: the feed is the whole database's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from inventory_graphql.testing.graphql_ws import GraphQLWebSocket, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import CONFIRM, EVENT_FIELDS, RELEASE, RESERVE
from tests.support.database import create_database
from tests.support.graphql_http import ADMIN, ADMIN_TOKEN, SERVER_ENV

PAGE = f"""
query Page($after: String, $first: Int) {{
  stockEvents(after: $after, first: $first) {{
    __typename
    ... on StockEventConnection {{
      edges {{ cursor node {{ {EVENT_FIELDS} }} }}
      pageInfo {{ endCursor hasNextPage }}
    }}
    ... on CursorExpired {{ cursor horizon }}
    ... on InvalidInput {{ field }}
    ... on Problem {{ message }}
  }}
}}
"""

FEED = f"""
subscription Feed($after: String) {{
  stockEvents(after: $after) {{
    __typename
    ... on StockEvent {{ {EVENT_FIELDS} }}
    ... on CursorExpired {{ cursor horizon }}
    ... on InvalidInput {{ field }}
    ... on Problem {{ message }}
  }}
}}
"""

CREATE = """
mutation Create($sku: String!, $quantity: Int!) {
  createProduct(sku: $sku, name: "Feed test", quantity: $quantity) { __typename }
}
"""
ADJUST = """
mutation Adjust($sku: String!, $delta: Int!) {
  adjustStock(sku: $sku, delta: $delta, reason: "restock") { __typename }
}
"""
THRESHOLD = """
mutation Threshold($sku: String!, $threshold: Int) {
  setLowStockThreshold(sku: $sku, threshold: $threshold) {
    __typename
    ... on Product { sku lowStockThreshold }
    ... on InvalidInput { field }
    ... on ProductNotFound { sku }
  }
}
"""
LOW_STOCK_THRESHOLD = "query One($sku: String!) { product(sku: $sku) { lowStockThreshold } }"

FEED_CAP = 2

PAST_HORIZON = """
SELECT count(*) FROM stock_event e, stock_event_horizon h
WHERE (e.feed_key, e.id) > (h.feed_key, h.id)
"""


@pytest.fixture(scope="module")
def feed_database(postgres_url: str) -> str:
    return asyncio.run(create_database(postgres_url))


@pytest.fixture(scope="module")
def feed_server(feed_database: str) -> Iterator[ServerProcess]:
    env = {
        "DATABASE_URL": feed_database,
        **SERVER_ENV,
        "INVENTORY_MAX_FEED_SUBSCRIPTIONS": str(FEED_CAP),
    }
    with ServerProcess(env) as server:
        yield server


@pytest.fixture
async def http(feed_server: ServerProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        feed_server.url, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, query: str, headers: dict[str, str] | None = None, **variables: Any
) -> dict[str, Any]:
    body = {"query": query, "variables": variables}
    async with http.post("/graphql", json=body, headers=ADMIN if headers is None else headers) as r:
        return dict(await r.json())


async def data(http: aiohttp.ClientSession, query: str, **variables: Any) -> dict[str, Any]:
    body = await post(http, query, **variables)
    assert "errors" not in body, body
    return dict(body["data"])


async def page_all(http: aiohttp.ClientSession, after: str | None, first: int) -> list[dict]:
    """Every final event after `after`, page by page (until a page says no more)."""
    events: list[dict] = []
    while True:
        got = (await data(http, PAGE, after=after, first=first))["stockEvents"]
        assert got["__typename"] == "StockEventConnection", got
        events += [edge["node"] for edge in got["edges"]]
        assert [e["cursor"] for e in got["edges"]] == [e["node"]["cursor"] for e in got["edges"]]
        after = got["pageInfo"]["endCursor"]
        if not got["pageInfo"]["hasNextPage"]:
            return events


async def feed_rows(database: str, after_id: int = 0) -> list[tuple[str, str, int, int]]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            "SELECT e.feed_key::text || '.' || e.id, e.kind::text, e.quantity, e.reserved "
            "FROM stock_event e ORDER BY e.feed_key, e.id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def shape(events: list[dict]) -> list[tuple[str, str, int, int]]:
    return [(e["cursor"], e["kind"], e["quantity"], e["reserved"]) for e in events]


async def test_pages_follow_end_cursors_through_every_event_in_feed_order(http, feed_database):
    sku = "FEED-PAGE"
    assert (await data(http, CREATE, sku=sku, quantity=5))["createProduct"]["__typename"] == (
        "Product"
    )
    holds = []
    for _ in range(3):
        got = await data(http, RESERVE, lines=[{"sku": sku, "quantity": 1}])
        holds.append(got["reserve"]["id"])
    await data(http, CONFIRM, id=holds[0])
    await data(http, RELEASE, id=holds[1])
    await data(http, ADJUST, sku=sku, delta=10)

    events = await page_all(http, None, 2)  # small pages: endCursor and hasNextPage at work
    assert shape(events) == await feed_rows(feed_database)
    mine = [(e["kind"], e["quantityDelta"], e["reservedDelta"]) for e in events if e["sku"] == sku]
    assert mine == [
        ("CREATED", 5, 0),
        ("RESERVED", 0, 1),
        ("RESERVED", 0, 1),
        ("RESERVED", 0, 1),
        ("CONFIRMED", -1, -1),
        ("RELEASED", 0, -1),
        ("ADJUSTED", 10, 0),
    ]
    last = [e for e in events if e["sku"] == sku][-1]
    assert (last["quantity"], last["reserved"], last["available"]) == (14, 1, 13)
    assert last["reason"] == "restock"

    # Nothing after the end: an empty page answers the cursor asked after, to ask again.
    end = events[-1]["cursor"]
    got = (await data(http, PAGE, after=end, first=10))["stockEvents"]
    assert got["edges"] == []
    assert got["pageInfo"] == {"endCursor": end, "hasNextPage": False}


async def test_the_feed_needs_the_admin_token(http, feed_server):
    body = await post(http, PAGE, headers={}, after=None, first=10)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    async with aiohttp.ClientSession() as session:
        socket = await GraphQLWebSocket.connect(session, feed_server.url)  # no token
        try:
            subscription = await socket.subscribe(FEED)
            with pytest.raises(SubscriptionError) as refused:
                await subscription.next()
            assert "admin token" in str(refused.value.errors)
        finally:
            await socket.close()


async def test_a_malformed_cursor_or_page_size_is_invalid_input(http):
    for after, first in [("12", 10), ("1.2.3", 10), ("-1.5", 10), ("x", 10), ("1.2", 0)]:
        got = (await data(http, PAGE, after=after, first=first))["stockEvents"]
        assert got["__typename"] == "InvalidInput", (after, got)
        assert got["field"] == ("first" if first == 0 else "after")
    # (A page of 1,000 with every field costs more than the default cost limit: this asks
    # for the refusal's fields only.)
    small = "query($first: Int) { stockEvents(first: $first) { ... on InvalidInput { field } } }"
    assert (await data(http, small, first=1001))["stockEvents"]["field"] == "first"


async def test_low_stock_threshold_is_set_shown_and_cleared(http):
    sku = "FEED-THRESHOLD"
    await data(http, CREATE, sku=sku, quantity=5)
    got = (await data(http, THRESHOLD, sku=sku, threshold=3))["setLowStockThreshold"]
    assert got == {"__typename": "Product", "sku": sku, "lowStockThreshold": 3}
    assert (await data(http, LOW_STOCK_THRESHOLD, sku=sku))["product"]["lowStockThreshold"] == 3
    for bad in (0, -1, 1_000_000_001):
        refused = (await data(http, THRESHOLD, sku=sku, threshold=bad))["setLowStockThreshold"]
        assert refused == {"__typename": "InvalidInput", "field": "threshold"}
    missing = (await data(http, THRESHOLD, sku="NO-SUCH", threshold=1))["setLowStockThreshold"]
    assert missing == {"__typename": "ProductNotFound", "sku": "NO-SUCH"}
    body = await post(http, THRESHOLD, headers={}, sku=sku, threshold=1)
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    cleared = (await data(http, THRESHOLD, sku=sku, threshold=None))["setLowStockThreshold"]
    assert cleared["lowStockThreshold"] is None

    # Crossing it by a sale fires LOW_STOCK once.
    await data(http, THRESHOLD, sku=sku, threshold=3)
    before = (await page_all(http, None, 100))[-1]["cursor"]
    for _ in range(3):
        await data(http, RESERVE, lines=[{"sku": sku, "quantity": 1}])
    kinds = [e["kind"] for e in await page_all(http, before, 100) if e["sku"] == sku]
    assert kinds == ["RESERVED", "RESERVED", "RESERVED", "LOW_STOCK"]  # 5 -> 2, below 3


async def next_event(subscription: Any) -> dict[str, Any]:
    item: dict[str, Any] = (await subscription.next())["stockEvents"]
    return item


async def test_subscription_replays_then_goes_live_with_the_token_in_connection_init(
    http, feed_server, feed_database
):
    sku = "FEED-LIVE"
    await data(http, CREATE, sku=sku, quantity=3)
    replayed = await page_all(http, None, 100)
    start = replayed[-3]["cursor"] if len(replayed) >= 3 else None
    expected_replay = replayed[-2:] if start else replayed

    async with aiohttp.ClientSession() as session:
        # Browsers cannot send headers on the upgrade: the admin token in connection_init.
        socket = await GraphQLWebSocket.connect(
            session, feed_server.url, {"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        try:
            subscription = await socket.subscribe(FEED, after=start)
            got = [await next_event(subscription) for _ in expected_replay]
            assert [e["cursor"] for e in got] == [e["cursor"] for e in expected_replay]
            # Live: each change arrives once, in order, with nothing skipped.
            hold = (await data(http, RESERVE, lines=[{"sku": sku, "quantity": 3}]))["reserve"]
            await data(http, RELEASE, id=hold["id"])
            live = [await next_event(subscription) for _ in range(4)]
            assert [(e["kind"], e["available"]) for e in live] == [
                ("RESERVED", 0),
                ("OUT_OF_STOCK", 0),
                ("RELEASED", 3),
                ("BACK_IN_STOCK", 3),
            ]
            assert all(e["reservationId"] == hold["id"] for e in live if "RE" in e["kind"][:2])
            assert shape(got + live) == (await feed_rows(feed_database))[-len(got + live) :]
            assert subscription.waiting == 0
        finally:
            await socket.close()


async def test_a_malformed_cursor_is_sent_once_then_the_stream_completes(feed_server):
    async with aiohttp.ClientSession() as session:
        socket = await GraphQLWebSocket.connect(
            session, feed_server.url, {"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        try:
            subscription = await socket.subscribe(FEED, after="nope")
            item = await next_event(subscription)
            assert (item["__typename"], item["field"]) == ("InvalidInput", "after")
            assert (await subscription.message())["type"] == "complete"
        finally:
            await socket.close()


async def test_feed_subscriptions_are_capped_per_process(feed_server):
    async with aiohttp.ClientSession() as session:
        socket = await GraphQLWebSocket.connect(
            session, feed_server.url, {"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        try:
            open_ = [await socket.subscribe(FEED) for _ in range(FEED_CAP)]
            for subscription in open_:  # each started: it replays the feed's first event
                await next_event(subscription)
            refused = await socket.subscribe(FEED)
            with pytest.raises(SubscriptionError) as error:
                await refused.next()
            assert error.value.errors[0]["extensions"]["code"] == "TOO_MANY_FEED_SUBSCRIPTIONS"
            # A slot given back is free again at once.
            await open_[0].complete()
            for _ in range(50):
                retried = await socket.subscribe(FEED)
                message = await retried.message()
                if message["type"] == "next":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the slot was never given back")
        finally:
            await socket.close()


@pytest.fixture
def pruning_server(postgres_url: str) -> Iterator[tuple[ServerProcess, str]]:
    database = asyncio.run(create_database(postgres_url))
    env = {
        "DATABASE_URL": database,
        **SERVER_ENV,
        # One second of retention, pruned every 0.2 s.
        "INVENTORY_EVENT_RETENTION_HOURS": str(1 / 3600),
        "INVENTORY_EVENT_PRUNE_INTERVAL_SECONDS": "0.2",
    }
    with ServerProcess(env) as server:
        yield server, database


async def test_a_cursor_older_than_the_retention_is_answered_cursor_expired(pruning_server):
    server, database = pruning_server
    async with aiohttp.ClientSession(server.url) as http:
        await data(http, CREATE, sku="FEED-OLD-1", quantity=1)
        await data(http, CREATE, sku="FEED-OLD-2", quantity=1)
        first = (await data(http, PAGE, after=None, first=1))["stockEvents"]
        cursor = first["edges"][0]["cursor"]
        conn = await asyncpg.connect(database)
        try:
            for _ in range(100):  # the pruner runs every 0.2 s; events are old after 1 s
                if not await conn.fetchval(PAST_HORIZON):
                    break
                await asyncio.sleep(0.1)
            horizon = await conn.fetchval(
                "SELECT feed_key::text || '.' || id FROM stock_event_horizon"
            )
        finally:
            await conn.close()
        got = (await data(http, PAGE, after=cursor, first=10))["stockEvents"]
        assert got["__typename"] == "CursorExpired", got
        assert (got["cursor"], got["horizon"]) == (cursor, horizon)
        assert "retention" in got["message"]
        # The horizon itself is a good cursor; so is none (from the oldest kept).
        for after in (horizon, None):
            fine = (await data(http, PAGE, after=after, first=10))["stockEvents"]
            assert fine["__typename"] == "StockEventConnection"
        # A new event after the cut is served after the horizon, alone: the pruned ledger
        # rows of its product are not turned into events again.
        await data(http, ADJUST, sku="FEED-OLD-1", delta=1)
        fresh = (await data(http, PAGE, after=horizon, first=10))["stockEvents"]
        assert [e["node"]["kind"] for e in fresh["edges"]] == ["ADJUSTED"]
        assert fresh["edges"][0]["node"]["quantity"] == 2

        async with aiohttp.ClientSession() as session:
            socket = await GraphQLWebSocket.connect(
                session, server.url, {"authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            try:
                subscription = await socket.subscribe(FEED, after=cursor)
                item = await next_event(subscription)
                assert (item["__typename"], item["horizon"]) == ("CursorExpired", horizon)
                assert (await subscription.message())["type"] == "complete"
            finally:
                await socket.close()
