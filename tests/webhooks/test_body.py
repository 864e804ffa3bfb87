"""A webhook message's body, built by PostgreSQL (delivery.MESSAGE_EVENTS), carries each
event exactly as the feed's API shows it (stockEvents over HTTP): every field, null or
not, and occurredAt as the API writes it, with and without a fraction of a second."""

from __future__ import annotations

import aiohttp
import asyncpg
import orjson

from inventory_graphql.inventory import stock_events
from inventory_graphql.inventory.catalog import ADJUST
from inventory_graphql.inventory.models import LineRequest, Reservation
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.testing.server import ServerProcess
from inventory_graphql.webhooks.delivery import MESSAGE_EVENTS, body
from tests.api.queries import EVENT_FIELDS
from tests.support.graphql_http import ADMIN

PAGE = f"""
query Page($after: String, $first: Int) {{
  stockEvents(after: $after, first: $first) {{
    __typename
    ... on StockEventConnection {{ edges {{ node {{ {EVENT_FIELDS} }} }} }}
  }}
}}
"""


async def test_a_message_body_carries_the_events_as_the_api_shows_them(
    db: asyncpg.Connection, service: InventoryService, make_product, server: ServerProcess
) -> None:
    start = max(await stock_events.horizon(db), await _feed_end(db))
    sku = await make_product(5)
    held = await service.reserve([LineRequest(sku, 2)])
    assert isinstance(held, Reservation)
    assert await db.fetchrow(ADJUST, sku, 3, "restock")
    # A row written on a whole second: Python's isoformat leaves the fraction out.
    await db.execute(
        "INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason, "
        "reference, created_at) SELECT id, 'ADJUST', 0, 0, 'count', 'PO-7', "
        "date_trunc('second', now()) FROM product WHERE sku = $1",
        sku,
    )
    await service.release(str(held.id))
    events = await stock_events.read_page(db, start, 100)
    ours = [e for e in events if e.sku == sku]
    assert {e.kind for e in ours} >= {"CREATED", "RESERVED", "ADJUSTED", "RELEASED"}
    assert any(e.occurred_at.microsecond == 0 for e in ours)
    last = events[-1].cursor
    row = await db.fetchrow(MESSAGE_EVENTS, *_key(start), *_key(last), None, len(events) + 1)
    assert row is not None
    assert row["events"] == len(events)
    message = orjson.loads(body(row["json"], row["last_at"]))
    shown = await api_events(server, start, len(events))
    assert message == {
        "type": "stock.events",
        "timestamp": shown[-1]["occurredAt"],
        "data": {"events": shown},
    }
    # Only the kinds asked for.
    row = await db.fetchrow(
        MESSAGE_EVENTS, *_key(start), *_key(last), ["RELEASED"], len(events) + 1
    )
    assert row is not None
    assert [e["kind"] for e in orjson.loads(row["json"])] == ["RELEASED"] * sum(
        e.kind == "RELEASED" for e in events
    )


async def api_events(
    server: ServerProcess, after: stock_events.Cursor, first: int
) -> list[dict[str, object]]:
    """The events after `after` as the feed's API answers them."""
    query = {"query": PAGE, "variables": {"after": str(after), "first": first}}
    async with (
        aiohttp.ClientSession(server.url) as http,
        http.post("/graphql", json=query, headers=ADMIN) as answer,
    ):
        page = (await answer.json())["data"]["stockEvents"]
    assert page["__typename"] == "StockEventConnection", page
    return [edge["node"] for edge in page["edges"]]


async def _feed_end(db: asyncpg.Connection) -> stock_events.Cursor:
    row = await db.fetchrow(
        "SELECT feed_key, id FROM stock_event WHERE feed_key IS NOT NULL "
        "ORDER BY feed_key DESC, id DESC LIMIT 1"
    )
    return stock_events.START if row is None else stock_events.Cursor(row[0], row[1])


def _key(cursor: stock_events.Cursor) -> tuple[int, int]:
    return cursor.feed_key, cursor.id
