"""The benchmark peer's function (bench/harness/peer/reserve.sql) writes what the
service's uncoalesced one-line reserve writes, and refuses what does not fit, also under
contention. SQL only: no Node, no PostGraphile."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from bench.peer_postgraphile import PEER_SQL

from inventory_graphql.inventory.catalog import CREATE
from inventory_graphql.inventory.models import LineRequest, Reservation
from inventory_graphql.inventory.reconcile import reconcile
from inventory_graphql.inventory.reservations import hold_lines
from tests.support.database import new_sku

PEER_RESERVE = "SELECT (r).* FROM (SELECT peer.reserve($1, $2, $3) AS r) AS x WHERE r IS NOT NULL"
TTL = 3600

# What a one-line reserve leaves, per product, less what differs by nature (ids, times).
PRODUCT = "SELECT quantity, reserved, version, waiting FROM product WHERE sku = $1"
HOLD = """
SELECT r.status::text, r.buyer, r.idempotency_key, r.resolved_at,
       r.expires_at - r.created_at AS ttl, l.quantity, l.confirmed, l.released
FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id WHERE p.sku = $1
"""
LEDGER = """
SELECT m.kind::text, m.quantity_delta, m.reserved_delta, m.reason, m.actor,
       m.reservation_id IS NOT NULL AS has_hold, m.feed_key IS NOT NULL AS in_feed,
       m.quantity_after, m.reserved_after, m.version_after
FROM stock_movement m JOIN product p ON p.id = m.product_id WHERE p.sku = $1 ORDER BY m.id
"""
CROSSINGS = """
SELECT c.kind::text, c.quantity, c.reserved
FROM stock_crossing c JOIN product p ON p.id = c.product_id WHERE p.sku = $1 ORDER BY c.id
"""


async def _installed(db: asyncpg.Connection) -> None:
    await db.execute(PEER_SQL.read_text())


async def _product(db: asyncpg.Connection, quantity: int) -> str:
    sku = new_sku("PEER")
    assert await db.fetchrow(CREATE, sku, "peer test", quantity)
    return sku


async def _left(db: asyncpg.Connection, sku: str) -> dict[str, Any]:
    return {
        "product": dict(await db.fetchrow(PRODUCT, sku) or {}),
        "holds": [dict(r) for r in await db.fetch(HOLD, sku)],
        "ledger": [dict(r) for r in await db.fetch(LEDGER, sku)],
        "crossings": [dict(r) for r in await db.fetch(CROSSINGS, sku)],
    }


async def test_writes_what_the_service_writes(own_db: asyncpg.Connection) -> None:
    await _installed(own_db)
    # One unit of one: the reserve also crosses to out of stock (a deferred trigger).
    service_sku, peer_sku = await _product(own_db, 1), await _product(own_db, 1)
    async with own_db.transaction():
        held = await hold_lines(own_db, uuid.uuid4(), [LineRequest(service_sku, 1)], TTL)
    assert isinstance(held, Reservation)
    assert await own_db.fetchrow(PEER_RESERVE, peer_sku, 1, TTL) is not None

    service, peer = await _left(own_db, service_sku), await _left(own_db, peer_sku)
    assert peer == service
    assert [m["kind"] for m in peer["ledger"]] == ["CREATE", "RESERVE"]
    assert peer["crossings"] == [{"kind": "OUT_OF_STOCK", "quantity": 1, "reserved": 1}]
    assert (await reconcile(own_db, 0)).ok


async def test_refuses_what_does_not_fit(own_db: asyncpg.Connection) -> None:
    await _installed(own_db)
    sku = await _product(own_db, 2)
    assert await own_db.fetchrow(PEER_RESERVE, sku, 3, TTL) is None
    assert await own_db.fetchrow(PEER_RESERVE, new_sku("NONE"), 1, TTL) is None
    assert await own_db.fetchrow(PEER_RESERVE, sku, 2, TTL) is not None
    assert await own_db.fetchrow(PEER_RESERVE, sku, 1, TTL) is None

    left = await _left(own_db, sku)
    assert left["product"]["reserved"] == 2
    assert [h["quantity"] for h in left["holds"]] == [2]  # refusals wrote no hold
    assert [m["kind"] for m in left["ledger"]] == ["CREATE", "RESERVE"]
    assert (await reconcile(own_db, 0)).ok


async def test_never_oversells_under_contention(
    own_database: str, own_db: asyncpg.Connection
) -> None:
    await _installed(own_db)
    sku = await _product(own_db, 5)
    async with asyncpg.create_pool(own_database, min_size=16, max_size=16) as pool:
        answers = await asyncio.gather(
            *(pool.fetchrow(PEER_RESERVE, sku, 1, TTL) for _ in range(40))
        )
    assert sum(answer is not None for answer in answers) == 5
    left = await _left(own_db, sku)
    assert left["product"]["reserved"] == 5
    assert len(left["holds"]) == 5
    assert (await reconcile(own_db, 0)).ok
