"""The database itself refuses what would break an invariant, whoever writes."""

from __future__ import annotations

import asyncpg
import pytest

from inventory_graphql.inventory.models import LineRequest
from tests.support.database import check


async def test_reserved_can_never_exceed_quantity(db, make_product):
    sku = await make_product(2)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE product SET reserved = 3 WHERE sku = $1", sku)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE product SET reserved = -1 WHERE sku = $1", sku)


async def test_version_bumps_on_any_writer(db, make_product):
    sku = await make_product(2)
    await db.execute("UPDATE product SET name = 'renamed by hand' WHERE sku = $1", sku)
    assert await db.fetchval("SELECT version FROM product WHERE sku = $1", sku) == 2


async def test_a_resolved_hold_never_changes_again(service, db, make_product):
    sku = await make_product(2)
    held = await service.reserve([LineRequest(sku, 1)])
    await service.release(held.id)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE reservation SET status = 'CONFIRMED' WHERE id = $1::uuid", held.id)


async def test_ledger_is_append_only(db, make_product):
    await make_product(1)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM stock_movement")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE stock_movement SET quantity_delta = 0")


async def test_check_finds_stock_changed_behind_the_ledger(db, make_product):
    sku = await make_product(5)
    assert (await check(db)).ok
    await db.execute("UPDATE product SET quantity = quantity + 1 WHERE sku = $1", sku)
    report = await check(db)
    assert not report.ok and any(sku in p for p in report.problems)
    await db.execute("UPDATE product SET quantity = quantity - 1 WHERE sku = $1", sku)
    assert (await check(db)).ok
