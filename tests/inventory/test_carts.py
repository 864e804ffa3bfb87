"""Carts (several lines), coalesced or per request: all or nothing, and cheap to refuse."""

from __future__ import annotations

import asyncpg
import pytest

from inventory_graphql.config import Settings
from inventory_graphql.inventory.models import InsufficientStock, LineRequest
from inventory_graphql.inventory.service import InventoryService
from tests.support.database import ledger, stock


@pytest.mark.parametrize("coalesce", [False, True], ids=["per-request", "coalesced"])
async def test_a_cart_that_cannot_fit_is_refused_before_it_locks_anything(
    pool, db, database_url, make_product, coalesce
):
    """An impossible cart costs one read: refused even while another of its products is
    locked by someone else (it used to wait for that row, then answer BUSY). Coalesced,
    it would otherwise lock every row of its batch's skus first."""
    fits, locked, short = sorted([await make_product(10) for _ in range(3)])
    service = InventoryService(pool, Settings(coalesce_reservations=coalesce, lock_timeout_ms=200))
    blocker = await asyncpg.connect(database_url)
    try:
        async with service.running(sweep=False), blocker.transaction():
            await blocker.execute("SELECT 1 FROM product WHERE sku = $1 FOR UPDATE", locked)
            outcome = await service.reserve(
                [LineRequest(fits, 1), LineRequest(locked, 1), LineRequest(short, 11)]
            )
    finally:
        await blocker.close()
    assert outcome == InsufficientStock(short, 11, 10)
    for sku in (fits, locked, short):
        assert (await stock(db, sku))["reserved"] == 0
    assert [kind for kind, *_ in await ledger(db, fits)] == ["CREATE"]
