"""Migrations: idempotent, and safe when several processes start at once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from inventory_graphql.database import migrate, migrations, with_database


@pytest.fixture
async def empty_database(postgres_url: str):
    name = "inventory_migrate_test"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"DROP DATABASE IF EXISTS {name}")
    await conn.execute(f"CREATE DATABASE {name}")
    yield with_database(postgres_url, name)
    await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await conn.close()


async def test_concurrent_migrations_apply_each_file_once(empty_database):
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, 0, len(migrations())]
        assert await migrate(conns[0]) == []
        versions = await conns[0].fetch("SELECT version FROM schema_migration ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in migrations()]
    finally:
        for c in conns:
            await c.close()


def test_migrations_are_numbered_sql_files():
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))


async def test_the_feed_keeps_its_events_through_the_ledger_feed_migration(empty_database):
    """A database with events written by 008's capture (and one round of its pruning) is
    migrated by 011: the feed after the horizon is the same, row by row (crossings
    included), and `check` passes, before and after new writes."""
    from inventory_graphql.inventory.catalog import ADJUST
    from inventory_graphql.inventory.reconcile import reconcile

    conn = await asyncpg.connect(empty_database)
    try:
        assert [m.version for m in await migrate(conn, upto=10)] == list(range(1, 11))
        # Writers as they were at 010: the ledger rows carry no numbers; 008's trigger
        # turns them into events.
        for sku, quantity in (("A", 5), ("B", 2)):
            await conn.execute(
                "WITH p AS (INSERT INTO product (sku, name, quantity) VALUES ($1, $1, $2) "
                "RETURNING id, quantity) INSERT INTO stock_movement (product_id, kind, "
                "quantity_delta, reserved_delta, reason) SELECT id, 'CREATE', quantity, 0, "
                "'created' FROM p",
                sku,
                quantity,
            )
        for delta in (3, -1):
            await conn.execute(
                "WITH a AS (UPDATE product SET quantity = quantity + $1 WHERE sku = 'A' "
                "RETURNING id) INSERT INTO stock_movement (product_id, kind, quantity_delta, "
                "reserved_delta, reason) SELECT id, 'ADJUST', $1, 0, 'count' FROM a",
                delta,
            )
        # Both units of B in one grant: two RESERVED events, then OUT_OF_STOCK.
        await conn.fetch(
            "SELECT * FROM grant_singles($1, $2, $3, $4, $5, NULL)",
            ["B", "B"],
            [1, 1],
            [uuid.uuid4(), uuid.uuid4()],
            [600.0, 600.0],
            [None, None],
        )
        # 008's pruning as it ran: A's first event gone, the horizon at it.
        await conn.execute(
            "WITH gone AS (DELETE FROM stock_event WHERE id = (SELECT min(e.id) FROM "
            "stock_event e JOIN product p ON p.id = e.product_id WHERE p.sku = 'A') "
            "RETURNING feed_key, id) UPDATE stock_event_horizon h SET feed_key = gone.feed_key, "
            "id = gone.id FROM gone"
        )
        before = await conn.fetch("SELECT * FROM stock_event ORDER BY feed_key, id")
        assert [r["kind"] for r in before].count("OUT_OF_STOCK") == 1
        assert len(before) == 6  # A: 2 adjustments; B: created, 2 reserved, 1 crossing

        assert [m.version for m in await migrate(conn)] == [
            m.version for m in migrations() if m.version > 10
        ]
        after = await conn.fetch(
            "SELECT e.* FROM stock_event e, stock_event_horizon h "
            "WHERE (e.feed_key, e.id) > (h.feed_key, h.id) ORDER BY e.feed_key, e.id"
        )
        assert [dict(r) for r in after] == [dict(r) for r in before]
        assert (report := await reconcile(conn, 300.0)).ok, report.problems
        # New writes chain on from the migrated events.
        assert await conn.fetchrow(ADJUST, "A", 2, "restock")
        latest = await conn.fetchrow(
            "SELECT e.kind::text, e.quantity, e.reserved FROM stock_event e JOIN product p "
            "ON p.id = e.product_id WHERE p.sku = 'A' AND e.feed_key IS NOT NULL "
            "ORDER BY e.feed_key DESC, e.id DESC LIMIT 1"
        )
        assert latest is not None and tuple(latest) == ("ADJUSTED", 9, 0)
        assert (report := await reconcile(conn, 300.0)).ok, report.problems
    finally:
        await conn.close()
