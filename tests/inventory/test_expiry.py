"""Expiry without the HTTP layer, so the tests decide when the sweeper runs."""

from __future__ import annotations

import asyncio

import pytest

from inventory_graphql.inventory.models import (
    LineRequest,
    Reservation,
    ReservationNotPending,
    ReservationStatus,
)
from inventory_graphql.inventory.reservations import Reservations
from inventory_graphql.inventory.sweeper import Sweeper
from tests.support.database import check, ledger, past_expiry, stock


async def test_confirm_after_expiry_expires_the_hold_instead(service, db, make_product):
    sku = await make_product(3)
    held = await service.reserve([LineRequest(sku, 2)], ttl_seconds=1)
    assert isinstance(held, Reservation)
    await past_expiry(db, held.id)  # no sweeper runs in this process

    outcome = await service.confirm(held.id)

    assert outcome == ReservationNotPending(held.id, ReservationStatus.EXPIRED)
    assert await stock(db, sku) == {"quantity": 3, "reserved": 0, "available": 3, "version": 3}
    assert await ledger(db, sku) == [("CREATE", 3, 0), ("RESERVE", 0, 2), ("EXPIRE", 0, -2)]


async def test_release_after_expiry_answers_the_expired_hold(service, db, make_product):
    sku = await make_product(3)
    held = await service.reserve([LineRequest(sku, 1)], ttl_seconds=1)
    await past_expiry(db, held.id)

    outcome = await service.release(held.id)

    assert isinstance(outcome, Reservation) and outcome.status is ReservationStatus.EXPIRED
    assert (await stock(db, sku))["reserved"] == 0


async def test_sweepers_in_several_processes_expire_each_hold_once(database_url, db, make_product):
    """Two sweepers with their own pools (as two server processes would) share a backlog."""
    import asyncpg

    from inventory_graphql.config import Settings
    from inventory_graphql.inventory.service import InventoryService

    skus = [await make_product(1000) for _ in range(3)]
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in range(2)]
    services = [InventoryService(p, Settings(coalesce_reservations=False)) for p in pools]
    try:
        held = []
        for i in range(300):
            outcome = await services[i % 2].reserve(
                [LineRequest(skus[i % 3], 1), LineRequest(skus[(i + 1) % 3], 2)], ttl_seconds=1
            )
            assert isinstance(outcome, Reservation)
            held.append(outcome.id)
        await past_expiry(db, *held)
        sweepers = [Sweeper(Reservations(p, 600), interval=0.05, batch_size=20) for p in pools]

        swept = await asyncio.gather(*(s.sweep_once() for s in sweepers))

        assert sum(swept) >= 300  # other tests' due holds may be swept too
        assert all(n > 0 for n in swept), "both sweepers took part"
        for sku in skus:
            assert (await stock(db, sku))["reserved"] == 0
            # Each product is on 200 of the 300 carts: one EXPIRE row per line, no more.
            assert [k for k, *_ in await ledger(db, sku)].count("EXPIRE") == 200
        assert (await check(db)).ok
    finally:
        for pool in pools:
            await pool.close()


# 50 batches of 500: a drain that took its backlog in one statement would hold the hot
# product's row throughout and starve the reserves below. (It was 100,000; every later
# `check` in this session's database read them.)
BACKLOG = 25_000


async def test_a_backlog_of_25000_drains_in_batches_while_reserving(
    service, pool, db, database_url, make_product
):
    # This test hung twice in ~10 full-suite runs (never alone), once seen stuck inside
    # `check` after the bulk load below. Bounded, and if it runs out of time it says what
    # every backend of its database was doing shortly before.
    import asyncpg

    seen: list[asyncpg.Record] = []

    async def snapshot_later() -> None:
        await asyncio.sleep(100)
        conn = await asyncpg.connect(database_url)
        try:
            seen.extend(
                await conn.fetch(
                    "SELECT application_name, state, wait_event_type, wait_event, "
                    "left(query, 200) AS query, now() - query_start AS running "
                    "FROM pg_stat_activity WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()

    watchdog = asyncio.create_task(snapshot_later())
    try:
        async with asyncio.timeout(120):
            await _backlog_drains(service, pool, db, make_product)
    except TimeoutError:
        await asyncio.wait_for(watchdog, 5)
        pytest.fail("backlog test ran out of time; backends:\n" + "\n".join(map(str, seen)))
    finally:
        watchdog.cancel()


async def _backlog_drains(service, pool, db, make_product):
    hot, other = await make_product(200_000), await make_product(10_000)
    # BACKLOG holds already past expiry, made in bulk the way reserve would make them.
    await db.execute(
        """
        WITH r AS (
            INSERT INTO reservation (created_at, expires_at)
            SELECT now() - interval '2 hours', now() - interval '1 hour'
            FROM generate_series(1, $2::int)
            RETURNING id
        ), l AS (
            INSERT INTO reservation_line (reservation_id, product_id, quantity)
            SELECT r.id, p.id, 1 FROM r, product p WHERE p.sku = $1
            RETURNING reservation_id, product_id, quantity
        ), u AS (
            UPDATE product SET reserved = reserved + $2 WHERE sku = $1
            RETURNING id, quantity, reserved, version,
                      greatest(pg_current_xact_id(), feed_key) AS feed_key
        )
        -- Many ledger rows of one product in one statement: each with its own numbers and
        -- place in the feed, as grant_singles writes them (migration 011).
        INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta,
                                    reservation_id, feed_key, quantity_after, reserved_after,
                                    version_after)
        SELECT l.product_id, 'RESERVE', 0, l.quantity, l.reservation_id, u.feed_key, u.quantity,
               u.reserved - $2 + row_number() OVER (ORDER BY l.reservation_id), u.version
        FROM l JOIN u ON u.id = l.product_id
        ORDER BY l.reservation_id
        """,
        hot,
        BACKLOG,
    )
    # A bulk load no server would see: give the planner the statistics autovacuum would.
    await db.execute("ANALYZE reservation, reservation_line, stock_movement, product")
    assert (await stock(db, hot))["reserved"] == BACKLOG
    sweeper = Sweeper(Reservations(pool, 600), interval=0.05, batch_size=500)
    drain = asyncio.create_task(sweeper.sweep_once())

    # Reservations on the same hot product and on another keep succeeding mid-drain.
    made = {hot: 0, other: 0}
    made_during_drain = 0
    while not drain.done():
        for sku in (hot, other):
            outcome = await service.reserve([LineRequest(sku, 1)], ttl_seconds=600)
            assert isinstance(outcome, Reservation)
            made[sku] += 1
            made_during_drain += not drain.done()
    swept = await drain

    assert swept >= BACKLOG
    assert made_during_drain >= 10, "reservations were stalled by the drain"
    assert (await stock(db, hot))["reserved"] == made[hot]
    assert (await stock(db, other))["reserved"] == made[other]
    pending = await db.fetchval(
        "SELECT count(*) FROM reservation WHERE status = 'PENDING' AND expires_at < now()"
    )
    assert pending == 0
    assert (await check(db)).ok


async def test_a_locked_product_does_not_stop_other_holds_expiring(
    service, pool, db, database_url, make_product
):
    """A row someone keeps locked (a psql prompt left open) holds up only its own holds."""
    import asyncpg

    locked, free = await make_product(10), await make_product(10)
    held = [await service.reserve([LineRequest(sku, 1)]) for sku in (locked, free, locked, free)]
    assert all(isinstance(hold, Reservation) for hold in held)
    await past_expiry(db, *(hold.id for hold in held))
    blocker = await asyncpg.connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM product WHERE sku = $1 FOR UPDATE", locked)
            started = asyncio.get_running_loop().time()
            swept = await Sweeper(Reservations(pool, 600), interval=0, batch_size=1).sweep_once()
            assert asyncio.get_running_loop().time() - started < 2
            assert swept >= 2
            assert (await stock(db, free))["reserved"] == 0
            assert (await stock(db, locked))["reserved"] == 2  # passed over, not lost
        swept = await Sweeper(Reservations(pool, 600), interval=0, batch_size=1).sweep_once()
        assert (await stock(db, locked))["reserved"] == 0
    finally:
        await blocker.close()
    assert (await check(db)).ok
