"""Admin writes in the service: keys kept for their retention and pruned after, restocks
that feed a waiting list answered as the transaction leaves the product, and the write
statements' bounds agreeing with the product table's."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from inventory_graphql.inventory import admin_writes, validation
from inventory_graphql.inventory.admin_writes import AdminWrites
from inventory_graphql.inventory.models import (
    Caller,
    LineRequest,
    Product,
    Reservation,
    StockAdjustment,
    WaitlistEntry,
)
from inventory_graphql.inventory.service import InventoryService
from tests.support.database import check, stock

ANN = Caller(admin=True, actor="ann")


async def test_keys_past_their_retention_are_pruned_and_then_free(
    service: InventoryService, pool: asyncpg.Pool, db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(0)
    old, fresh = f"old-{uuid.uuid4()}", f"fresh-{uuid.uuid4()}"
    for key in (old, fresh):
        assert isinstance(
            await service.adjust_stock(sku, 1, "restock", idempotency_key=key, caller=ANN),
            Product,
        )
    await db.execute(
        "UPDATE admin_write_key SET created_at = now() - interval '25 hours' "
        "WHERE actor = 'ann' AND key = $1",
        old,
    )

    assert await AdminWrites(pool).prune_once() >= 1

    kept = await db.fetch(
        "SELECT key FROM admin_write_key WHERE key = any($1::text[])", [old, fresh]
    )
    assert [r["key"] for r in kept] == [fresh]
    # A pruned key is a new key: it applies again (the retention is the replay window).
    await service.adjust_stock(sku, 1, "restock", idempotency_key=old, caller=ANN)
    await service.adjust_stock(sku, 1, "restock", idempotency_key=fresh, caller=ANN)
    assert (await stock(db, sku))["quantity"] == 3


async def test_a_restock_answers_the_product_after_the_waiting_list_was_served(
    service: InventoryService, db: asyncpg.Connection, make_product: Any
) -> None:
    sku = await make_product(1)
    buyer = Caller(buyer="ann-buyer")
    assert isinstance(await service.reserve([LineRequest(sku, 1)], caller=buyer), Reservation)
    entry = await service.join_waitlist(sku, 2, caller=Caller(buyer="bob-buyer"))
    assert isinstance(entry, WaitlistEntry)

    counted = await service.set_stock(sku, 4, "count", caller=ANN)

    # The count freed 3 units; the head wanted 2 and was offered them in the same
    # transaction: the answer says so, as the database does.
    assert isinstance(counted, Product)
    assert (counted.quantity, counted.reserved, counted.waiting) == (4, 3, 0)
    assert await stock(db, sku) == {
        "quantity": 4,
        "reserved": 3,
        "available": 1,
        "version": counted.version,
    }
    assert (await check(db)).ok


def test_the_write_statements_bound_stock_as_the_table_does() -> None:
    ceiling = f"BETWEEN p.reserved AND {validation.MAX_STOCK}"
    assert ceiling in admin_writes.ADJUST
    assert f"$2 {ceiling}" in admin_writes.SET


async def test_the_bulk_limit_is_the_services(service: InventoryService) -> None:
    items = [StockAdjustment(f"S-{i}", 1, "r") for i in range(admin_writes.MAX_ADJUSTMENTS + 1)]
    refused = await service.adjust_stocks(items)
    assert getattr(refused, "field", None) == "adjustments"
