"""Per-buyer purchase limits, the pending-hold cap and per-buyer scoping, at the service.

The limit is decided by PostgreSQL under the product's row lock (migration 006's
hold_line and grant_singles), on the coalesced path and per request alike. Every test
compares what callers were told with what the database holds.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from inventory_graphql.config import Settings
from inventory_graphql.inventory.models import (
    BuyerRequired,
    Caller,
    InsufficientStock,
    InvalidInput,
    LineRequest,
    Product,
    PurchaseLimitExceeded,
    Reservation,
    ReservationNotFound,
    ReservationStatus,
    TooManyPendingHolds,
)
from inventory_graphql.inventory.reconcile import reconcile
from inventory_graphql.inventory.service import InventoryService
from tests.support.database import stock

MODES = pytest.mark.parametrize("coalesce", [False, True], ids=["per-request", "coalesced"])

BUYER_HOLDS = """
SELECT r.id::text, r.status::text, l.quantity - l.released AS counted
FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
WHERE r.buyer = $1 AND p.sku = $2
"""


def buyer() -> Caller:
    return Caller(buyer=f"buyer-{uuid.uuid4().hex[:8]}")


async def limited(db: asyncpg.Connection, make_product, quantity: int, limit: int) -> str:
    sku: str = await make_product(quantity)
    await db.execute("UPDATE product SET purchase_limit = $2 WHERE sku = $1", sku, limit)
    return sku


async def check_ok(db: asyncpg.Connection) -> None:
    report = await reconcile(db, 3600)
    assert report.ok, report.problems


@MODES
async def test_one_buyer_racing_for_a_limited_sku_gets_exactly_the_limit(
    pool, db, make_product, coalesce
):
    sku = await limited(db, make_product, 100, 2)
    service = InventoryService(pool, Settings(coalesce_reservations=coalesce))
    caller = buyer()
    async with service.running(sweep=False):
        outcomes = await asyncio.gather(
            *(service.reserve([LineRequest(sku, 1)], caller=caller) for _ in range(200))
        )
    held = [o for o in outcomes if isinstance(o, Reservation)]
    refused = [o for o in outcomes if not isinstance(o, Reservation)]
    assert len(held) == 2
    # Each refusal is told what the buyer had when it was decided: the whole limit.
    assert refused == [PurchaseLimitExceeded(sku, 2, 2)] * 198
    rows = await db.fetch(BUYER_HOLDS, caller.buyer, sku)
    assert sorted(r["id"] for r in rows) == sorted(h.id for h in held)
    assert (await stock(db, sku))["reserved"] == 2
    await check_ok(db)


@MODES
async def test_carts_mixing_limited_and_unlimited_skus_are_all_or_nothing(
    pool, db, make_product, coalesce
):
    capped = await limited(db, make_product, 100, 2)
    free = await make_product(100)
    service = InventoryService(pool, Settings(coalesce_reservations=coalesce))
    caller = buyer()
    cart = [LineRequest(free, 3), LineRequest(capped, 1)]
    async with service.running(sweep=False):
        outcomes = await asyncio.gather(*(service.reserve(cart, caller=caller) for _ in range(40)))
    held = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(held) == 2
    assert [o for o in outcomes if not isinstance(o, Reservation)] == [
        PurchaseLimitExceeded(capped, 2, 2)
    ] * 38
    # A refused cart held nothing of its unlimited line either.
    assert (await stock(db, free))["reserved"] == 6
    assert (await stock(db, capped))["reserved"] == 2
    await check_ok(db)


@MODES
async def test_the_limit_counts_what_was_bought_and_not_what_went_back(
    pool, db, make_product, coalesce
):
    sku = await limited(db, make_product, 100, 3)
    service = InventoryService(pool, Settings(coalesce_reservations=coalesce))
    caller = buyer()
    async with service.running(sweep=False):
        bought = await service.reserve([LineRequest(sku, 2)], caller=caller)
        assert isinstance(bought, Reservation)
        assert isinstance(await service.confirm(bought.id, caller=caller), Reservation)
        returned = await service.reserve([LineRequest(sku, 1)], caller=caller)
        assert isinstance(returned, Reservation)
        assert await service.reserve([LineRequest(sku, 1)], caller=caller) == (
            PurchaseLimitExceeded(sku, 3, 3)
        )
        # Part of a hold given back no longer counts.
        assert isinstance(await service.release(returned.id, caller=caller), Reservation)
        again = await service.reserve([LineRequest(sku, 1)], caller=caller)
        assert isinstance(again, Reservation)
        # Without a buyer a limited sku cannot be had at all; with no limit it can.
        assert await service.reserve([LineRequest(sku, 1)]) == BuyerRequired(sku)
        unlimited = await service.set_purchase_limit(sku, None)
        assert isinstance(unlimited, Product) and unlimited.purchase_limit is None
        assert isinstance(await service.reserve([LineRequest(sku, 1)]), Reservation)
    rows = await db.fetch(BUYER_HOLDS, caller.buyer, sku)
    assert sum(r["counted"] for r in rows) == 3
    await check_ok(db)


async def test_a_limit_refusal_behind_an_earlier_request_of_the_batch_is_retried(db, make_product):
    """grant_singles judges a batch in order: a buyer's second request is not eligible
    while its first one counts, but if the first does not fit the stock the second is
    not refused for the limit (its numbers would not explain it): the coalescer tries it
    again, and it fits."""
    sku = await limited(db, make_product, 1, 2)
    ids = [uuid.uuid4(), uuid.uuid4()]
    args = ([sku, sku], [2, 1], ids, [60.0, 60.0], ["u", "u"], None)
    first = await db.fetch("SELECT * FROM grant_singles($1, $2, $3, $4, $5, $6)", *args)
    by_ord = {r["ord"]: r for r in first}
    assert by_ord[1]["created_at"] is None and by_ord[2]["created_at"] is None
    # The first is explained by the stock, the second by nothing: 0 held + 1 <= 2, 1 left.
    assert (by_ord[2]["held_after"], by_ord[2]["available_after"]) == (0, 1)
    again = await db.fetch(
        "SELECT * FROM grant_singles($1, $2, $3, $4, $5, $6)",
        [sku],
        [1],
        [ids[1]],
        [60.0],
        ["u"],
        None,
    )
    assert again[0]["created_at"] is not None


@MODES
async def test_pending_holds_per_buyer_are_capped_under_concurrency(
    pool, db, make_product, coalesce
):
    skus = [await make_product(5) for _ in range(20)]
    settings = Settings(coalesce_reservations=coalesce, max_pending_holds_per_buyer=3)
    service = InventoryService(pool, settings)
    caller = buyer()
    async with service.running(sweep=False):
        outcomes = await asyncio.gather(
            *(service.reserve([LineRequest(sku, 1)], caller=caller) for sku in skus)
        )
        held = [o for o in outcomes if isinstance(o, Reservation)]
        assert len(held) == 3
        assert [o for o in outcomes if not isinstance(o, Reservation)] == (
            [TooManyPendingHolds(3)] * 17
        )
        # Another buyer is not held back by this one's cap; a hold ended frees a place.
        assert isinstance(
            await service.reserve([LineRequest(skus[0], 1)], caller=buyer()), Reservation
        )
        assert isinstance(await service.release(held[0].id, caller=caller), Reservation)
        assert isinstance(
            await service.reserve([LineRequest(skus[0], 1)], caller=caller), Reservation
        )
    pending = await db.fetchval(
        "SELECT count(*) FROM reservation WHERE buyer = $1 AND status = 'PENDING'", caller.buyer
    )
    assert pending == 3
    await check_ok(db)


async def test_units_per_line_are_capped(pool, make_product):
    sku = await make_product(100)
    service = InventoryService(pool, Settings(max_units_per_line=5))
    outcome = await service.reserve([LineRequest(sku, 6)])
    assert outcome == InvalidInput("lines[0].quantity", "must be 1 to 5")


async def test_a_buyer_acts_only_on_its_own_holds(pool, db, make_product):
    sku = await make_product(10)
    service = InventoryService(pool, Settings(coalesce_reservations=False))
    owner, other = buyer(), buyer()
    hold = await service.reserve([LineRequest(sku, 2)], caller=owner)
    assert isinstance(hold, Reservation)
    assert await service.reservation(hold.id, caller=other) is None
    assert await service.reservation(hold.id) is None  # anonymous: not theirs either
    assert await service.release(hold.id, caller=other) == ReservationNotFound(hold.id)
    assert await service.confirm(hold.id, caller=other) == ReservationNotFound(hold.id)
    assert await service.extend(hold.id, 60, caller=other) == ReservationNotFound(hold.id)
    partial = [LineRequest(sku, 1)]
    assert await service.release(hold.id, partial, caller=other) == ReservationNotFound(hold.id)
    assert (await stock(db, sku))["reserved"] == 2
    found = await service.reservation(hold.id, caller=owner)
    assert found is not None and found.status is ReservationStatus.PENDING
    # An admin may act on any hold (operators release stuck ones).
    assert await service.reservation(hold.id, caller=Caller(admin=True)) == found


async def test_idempotency_keys_are_per_buyer(pool, db, make_product):
    sku = await make_product(10)
    service = InventoryService(pool, Settings(coalesce_reservations=False))
    first, second = buyer(), buyer()
    key = f"key-{uuid.uuid4()}"
    mine = await service.reserve([LineRequest(sku, 1)], idempotency_key=key, caller=first)
    assert isinstance(mine, Reservation)
    # Another buyer's replay is a new request of its own: it can neither get nor probe
    # the first buyer's hold (other lines are not IdempotencyKeyReused for it).
    theirs = await service.reserve([LineRequest(sku, 1)], idempotency_key=key, caller=second)
    assert isinstance(theirs, Reservation) and theirs.id != mine.id
    probe = await service.reserve([LineRequest(sku, 2)], idempotency_key=f"{key}-x", caller=second)
    assert isinstance(probe, Reservation)
    # The owner's own replay answers its hold.
    replay = await service.reserve([LineRequest(sku, 1)], idempotency_key=key, caller=first)
    assert isinstance(replay, Reservation) and replay.id == mine.id
    assert (await stock(db, sku))["reserved"] == 4


async def test_a_queue_on_a_sku_refuses_public_reserves(pool, db, make_product):
    """While a waiting list waits, nothing is available to a new reserve (no queue-jumping):
    the refusal says 0 available, whatever is left over."""
    sku = await make_product(3)
    entry = await db.fetchval(
        "INSERT INTO waitlist_entry (product_id, buyer, quantity) "
        "SELECT id, 'someone', 5 FROM product WHERE sku = $1 RETURNING id",
        sku,
    )
    await db.execute("UPDATE product SET waiting = 5 WHERE sku = $1", sku)
    for coalesce in (False, True):
        service = InventoryService(pool, Settings(coalesce_reservations=coalesce))
        async with service.running(sweep=False):
            assert await service.reserve([LineRequest(sku, 1)]) == InsufficientStock(sku, 1, 0)
    assert (await stock(db, sku))["reserved"] == 0
    await db.execute(
        "UPDATE waitlist_entry SET status = 'LEFT', resolved_at = now() WHERE id = $1", entry
    )
    await db.execute("UPDATE product SET waiting = 0 WHERE sku = $1", sku)
