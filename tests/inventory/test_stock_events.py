"""The stock event outbox (migration 008) at the SQL level: every writer path yields exactly
its events with the numbers right after each, crossings fire once per crossing whatever
caused them, a rolled-back transaction leaves nothing, and a reader serves only events of
ended transactions, per product in commit order."""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from inventory_graphql.inventory import stock_events
from inventory_graphql.inventory.catalog import ADJUST
from inventory_graphql.inventory.models import (
    Caller,
    InvalidInput,
    LineRequest,
    Reservation,
    WaitlistEntry,
)
from inventory_graphql.inventory.reconcile import EVENTS_OFF_LEDGER, EVENTS_UNCHAINED
from inventory_graphql.inventory.service import InventoryService
from tests.support.database import check, new_sku, past_expiry

GRANT = "SELECT * FROM grant_singles($1, $2, $3, $4, $5, $6)"
CROSSINGS = ("LOW_STOCK", "OUT_OF_STOCK", "BACK_IN_STOCK")

EVENTS = """
SELECT e.kind::text, e.quantity_delta, e.reserved_delta, e.quantity, e.reserved,
       e.reservation_id
FROM stock_event e JOIN product p ON p.id = e.product_id
WHERE p.sku = $1 ORDER BY e.id
"""


async def events(db: asyncpg.Connection, sku: str) -> list[tuple[str, int, int, int, int]]:
    """(kind, quantity delta, reserved delta, quantity after, reserved after), in id order."""
    return [tuple(r)[:5] for r in await db.fetch(EVENTS, sku)]


async def holds_of(db: asyncpg.Connection, sku: str) -> list[uuid.UUID | None]:
    return [r["reservation_id"] for r in await db.fetch(EVENTS, sku)]


async def feed_consistent(db: asyncpg.Connection) -> None:
    """The whole database's feed agrees with its ledger (check's two statements)."""
    async with db.transaction(isolation="repeatable_read", readonly=True):
        off = await db.fetch(EVENTS_OFF_LEDGER)
        unchained = await db.fetch(EVENTS_UNCHAINED)
    assert [r["problem"] for r in off + unchained] == []


async def test_create_reserve_confirm_release_adjust_each_yield_their_events(
    db, service: InventoryService, make_product
):
    sku = await make_product(5)
    a = await service.reserve([LineRequest(sku, 2)], 600)
    b = await service.reserve([LineRequest(sku, 1)], 600)
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    await service.confirm(a.id)
    await service.release(b.id)
    await service.adjust_stock(sku, 10, "restock")
    assert await events(db, sku) == [
        ("CREATED", 5, 0, 5, 0),
        ("RESERVED", 0, 2, 5, 2),
        ("RESERVED", 0, 1, 5, 3),
        ("CONFIRMED", -2, -2, 3, 1),
        ("RELEASED", 0, -1, 3, 0),
        ("ADJUSTED", 10, 0, 13, 0),
    ]
    ids = [uuid.UUID(a.id), uuid.UUID(b.id)]
    assert await holds_of(db, sku) == [None, ids[0], ids[1], ids[0], ids[1], None]
    await feed_consistent(db)


async def test_partial_confirm_and_release_and_expiry_by_the_sweeper(
    db, service: InventoryService, make_product
):
    sku = await make_product(10)
    hold = await service.reserve([LineRequest(sku, 6)], 600)
    assert isinstance(hold, Reservation)
    await service.release(hold.id, [LineRequest(sku, 1)])  # 5 held
    await service.confirm(hold.id, [LineRequest(sku, 2)])  # 2 bought, 3 back
    late = await service.reserve([LineRequest(sku, 4)], 600)
    assert isinstance(late, Reservation)
    await past_expiry(db, late.id)
    assert await service.expire_due() >= 1
    assert await events(db, sku) == [
        ("CREATED", 10, 0, 10, 0),
        ("RESERVED", 0, 6, 10, 6),
        ("RELEASED", 0, -1, 10, 5),
        ("CONFIRMED", -2, -2, 8, 3),
        ("RELEASED", 0, -3, 8, 0),
        ("RESERVED", 0, 4, 8, 4),
        ("EXPIRED", 0, -4, 8, 0),
    ]
    await feed_consistent(db)


async def test_a_multi_line_cart_yields_one_event_per_line_on_each_product(
    db, service: InventoryService, make_product
):
    a, b = await make_product(3), await make_product(1)
    cart = await service.reserve([LineRequest(b, 1), LineRequest(a, 2)], 600)
    assert isinstance(cart, Reservation)
    assert await events(db, a) == [("CREATED", 3, 0, 3, 0), ("RESERVED", 0, 2, 3, 2)]
    assert await events(db, b) == [
        ("CREATED", 1, 0, 1, 0),
        ("RESERVED", 0, 1, 1, 1),
        ("OUT_OF_STOCK", 0, 0, 1, 1),  # at commit, after the transaction's other events
    ]
    await feed_consistent(db)


@pytest.mark.parametrize("path", ["lean", "drop", "full"])
async def test_each_path_of_a_coalesced_batch_yields_one_event_per_grant(db, make_product, path):
    sku = await make_product(4)
    if path == "drop":  # a limited product, a buyer per request: the drop's statement
        await db.execute("UPDATE product SET purchase_limit = 10 WHERE sku = $1", sku)
    buyers = [None] * 5 if path == "lean" else [f"buyer-{i}" for i in range(5)]
    ids = [uuid.uuid4() for _ in range(5)]
    rows = await db.fetch(
        GRANT,
        [sku] * 5,
        [1, 2, 1, 1, 1],  # the fifth does not fit
        ids,
        [3600.0] * 5,
        buyers,
        1_000_000_000 if path == "full" else None,  # a cap that never binds: the full one
    )
    granted = [r["created_at"] is not None for r in sorted(rows, key=lambda r: r["ord"])]
    assert granted == [True, True, True, False, False]
    got = await events(db, sku)
    assert got == [
        ("CREATED", 4, 0, 4, 0),
        ("RESERVED", 0, 1, 4, 1),
        ("RESERVED", 0, 2, 4, 3),
        ("RESERVED", 0, 1, 4, 4),
        ("OUT_OF_STOCK", 0, 0, 4, 4),
    ]
    assert (await holds_of(db, sku))[1:4] == ids[:3]
    # Give the units back so this shared database has no hold of ours left to lapse.
    for hold in ids[:3]:
        await db.execute(
            "WITH r AS (UPDATE reservation SET status = 'RELEASED', resolved_at = now() "
            "WHERE id = $1 RETURNING id), l AS (UPDATE reservation_line SET released = quantity "
            "WHERE reservation_id = $1 RETURNING product_id, quantity), p AS (UPDATE product "
            "SET reserved = reserved - l.quantity FROM l WHERE product.id = l.product_id "
            "RETURNING product.id, l.quantity) INSERT INTO stock_movement "
            "(product_id, kind, quantity_delta, reserved_delta, reservation_id) "
            "SELECT id, 'RELEASE', 0, -quantity, $1 FROM p",
            hold,
        )
    await feed_consistent(db)


async def test_a_waiting_list_offer_is_captured_after_the_release_that_freed_the_units(
    db, service: InventoryService, make_product
):
    sku = await make_product(2)
    hold = await service.reserve([LineRequest(sku, 2)], 600, caller=Caller(buyer="ann"))
    assert isinstance(hold, Reservation)
    entry = await service.join_waitlist(sku, 2, caller=Caller(buyer="bob"))
    assert isinstance(entry, WaitlistEntry)
    await service.release(hold.id, caller=Caller(buyer="ann"))
    offered = await db.fetchval(
        "SELECT reservation_id FROM waitlist_entry WHERE id = $1", uuid.UUID(entry.id)
    )
    assert offered is not None
    assert await events(db, sku) == [
        ("CREATED", 2, 0, 2, 0),
        ("RESERVED", 0, 2, 2, 2),
        ("OUT_OF_STOCK", 0, 0, 2, 2),
        ("RELEASED", 0, -2, 2, 0),
        ("OFFERED", 0, 2, 2, 2),
        # Crossings at commit, each with the numbers of the update that crossed.
        ("BACK_IN_STOCK", 0, 0, 2, 0),
        ("OUT_OF_STOCK", 0, 0, 2, 2),
    ]
    assert (await holds_of(db, sku))[4] == offered
    await service.release(str(offered), caller=Caller(buyer="bob"))
    await feed_consistent(db)


async def test_thresholds_fire_once_per_crossing_even_by_a_plain_sql_update(
    db, service: InventoryService, make_product
):
    sku = await make_product(10)
    outcome = await service.set_low_stock_threshold(sku, 4)
    assert not isinstance(outcome, InvalidInput)
    assert isinstance(await service.set_low_stock_threshold(sku, 0), InvalidInput)
    hold = await service.reserve([LineRequest(sku, 7)], 600)  # 10 -> 3: below 4
    assert isinstance(hold, Reservation)
    # By hand, no ledger row: sold out, then a change that crosses nothing, then back.
    await db.execute("UPDATE product SET quantity = reserved WHERE sku = $1", sku)
    await db.execute("UPDATE product SET name = 'renamed' WHERE sku = $1", sku)
    await db.execute("UPDATE product SET quantity = reserved + 3 WHERE sku = $1", sku)
    await service.release(hold.id)  # 3 -> 10: rising crosses nothing but BACK from 0
    assert await events(db, sku) == [
        ("CREATED", 10, 0, 10, 0),
        ("RESERVED", 0, 7, 10, 7),
        ("LOW_STOCK", 0, 0, 10, 7),
        ("OUT_OF_STOCK", 0, 0, 7, 7),
        ("BACK_IN_STOCK", 0, 0, 10, 7),
        ("RELEASED", 0, -7, 10, 0),
    ]
    await feed_consistent(db)


async def test_a_rolled_back_transaction_leaves_no_event(db, make_product):
    sku = await make_product(5)
    before = await events(db, sku)
    tx = db.transaction()
    await tx.start()
    assert await db.fetchrow(ADJUST, sku, -5, "write-off")  # crosses to 0 as well
    assert len(await events(db, sku)) == len(before) + 1  # its event, in its transaction
    await tx.rollback()
    assert await events(db, sku) == before
    await feed_consistent(db)


async def page_after(conn: asyncpg.Connection, after: stock_events.Cursor) -> list[str]:
    return [e.sku for e in await stock_events.read_page(conn, after, 1000)]


async def test_a_reader_serves_no_event_of_a_transaction_still_open(database_url, db, make_product):
    """The hard case: a transaction that started earlier (a lower id) commits after a
    later one. Neither is served while the earlier is open; then both, earlier first."""
    early_sku, late_sku = await make_product(5), await make_product(5)
    start = await last_cursor(db)
    early = await asyncpg.connect(database_url)
    late = await asyncpg.connect(database_url)
    try:
        tx_early = early.transaction()
        await tx_early.start()
        await early.fetchval("SELECT pg_current_xact_id()")  # takes its id now
        async with late.transaction():
            assert await late.fetchrow(ADJUST, late_sku, 1, "late")
        assert await page_after(db, start) == []  # the late one committed, but not final
        assert await early.fetchrow(ADJUST, early_sku, 1, "early")
        assert await page_after(db, start) == []
        await tx_early.commit()
        assert await page_after(db, start) == [early_sku, late_sku]
    finally:
        await early.close()
        await late.close()


async def last_cursor(db: asyncpg.Connection) -> stock_events.Cursor:
    row = await db.fetchrow(
        "SELECT feed_key::text::numeric AS feed_key, id FROM stock_event "
        "ORDER BY feed_key DESC, id DESC LIMIT 1"
    )
    return stock_events.Cursor(int(row["feed_key"]), row["id"]) if row else stock_events.START


async def test_per_product_order_holds_when_a_writer_waits_on_the_row_lock(
    database_url, db, make_product
):
    """A transaction with a lower id that waits for a product's lock writes its event
    after the holder's: its feed key is raised to the product's last, so the feed shows
    the product's events in commit order."""
    other, contended = await make_product(5), await make_product(5)
    waiter = await asyncpg.connect(database_url)
    holder = await asyncpg.connect(database_url)
    try:
        tx_waiter = waiter.transaction()
        await tx_waiter.start()
        assert await waiter.fetchrow(ADJUST, other, 1, "first")  # the lower transaction id
        tx_holder = holder.transaction()
        await tx_holder.start()
        assert await holder.fetchrow(ADJUST, contended, 2, "holder")
        waiting = asyncio.create_task(waiter.fetchrow(ADJUST, contended, 3, "waiter"))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # it waits for the holder's row lock
        await tx_holder.commit()
        assert await asyncio.wait_for(waiting, 10)
        await tx_waiter.commit()
    finally:
        await waiter.close()
        await holder.close()
    rows = await db.fetch(
        "SELECT e.reason, e.version, e.feed_key::text::numeric AS k FROM stock_event e "
        "JOIN product p ON p.id = e.product_id WHERE p.sku = $1 ORDER BY e.feed_key, e.id",
        contended,
    )
    assert [r["reason"] for r in rows] == ["created", "holder", "waiter"]
    assert [r["version"] for r in rows] == sorted(r["version"] for r in rows)
    await feed_consistent(db)


def expected_crossings(states: list[tuple[int, int]], threshold: int) -> dict[str, int]:
    """The crossings a sequence of (quantity, reserved) states makes, by kind."""
    counts = dict.fromkeys(CROSSINGS, 0)
    for (q0, r0), (q1, r1) in itertools.pairwise(states):
        was, now = q0 - r0, q1 - r1
        counts["LOW_STOCK"] += was >= threshold > now
        counts["OUT_OF_STOCK"] += was > 0 and now == 0
        counts["BACK_IN_STOCK"] += was == 0 and now > 0
    return counts


async def test_thresholds_fire_exactly_once_per_crossing_under_concurrent_load(
    db, service: InventoryService, make_product
):
    sku = await make_product(6)
    await service.set_low_stock_threshold(sku, 3)
    rng = random.Random(16)
    holds: list[str] = []

    async def shopper(n: int) -> None:
        for _ in range(12):
            roll = rng.random()
            if roll < 0.5:
                got = await service.reserve([LineRequest(sku, rng.randint(1, 3))], 600)
                if isinstance(got, Reservation):
                    holds.append(got.id)
            elif roll < 0.85 and holds:
                hold = holds.pop(rng.randrange(len(holds)))
                await (service.release if rng.random() < 0.7 else service.confirm)(hold)
            else:
                await service.adjust_stock(sku, rng.choice([1, 2, 3]), "restock")

    await asyncio.gather(*(shopper(n) for n in range(8)))
    for hold in holds:
        await service.release(hold)
    rows = await db.fetch(
        "SELECT e.kind::text AS kind, e.quantity, e.reserved FROM stock_event e "
        "JOIN product p ON p.id = e.product_id WHERE p.sku = $1 ORDER BY e.id",
        sku,
    )
    states = [(r["quantity"], r["reserved"]) for r in rows if r["kind"] not in CROSSINGS]
    fired = dict.fromkeys(CROSSINGS, 0)
    for r in rows:
        if r["kind"] in CROSSINGS:
            fired[r["kind"]] += 1
    assert fired == expected_crossings(states, 3)
    assert fired["OUT_OF_STOCK"] >= 1 and fired["LOW_STOCK"] >= 1  # the load crossed
    await feed_consistent(db)
    report = await check(db)
    assert report.ok, report.problems


async def test_pruning_moves_the_horizon_deletes_crossings_and_keeps_the_ledger(
    postgres_url, make_product
):
    from tests.support.database import create_database

    url = await create_database(postgres_url)  # its own feed: pruning takes the whole
    conn = await asyncpg.connect(url)
    try:
        from inventory_graphql.inventory.catalog import CREATE

        a, b = new_sku(), new_sku()
        await conn.fetchrow(CREATE, a, "a", 3)
        await conn.fetchrow(CREATE, b, "b", 3)
        assert await conn.fetchrow(ADJUST, a, 1, "more")
        assert await conn.fetchrow(ADJUST, b, -3, "gone")  # and OUT_OF_STOCK
        ledger = await conn.fetch("SELECT * FROM stock_movement ORDER BY id")
        now = datetime.now(UTC)
        assert await stock_events.prune(conn, now, 2) == 2  # two, in feed order
        edge = await stock_events.horizon(conn)
        assert await stock_events.prune(conn, now, 1000) == 3
        last = await stock_events.horizon(conn)
        assert edge < last
        expired = await stock_events.read_after(conn, stock_events.START, 10)
        assert isinstance(expired, stock_events.Expired) and expired.horizon == last
        assert await stock_events.read_after(conn, last, 10) == []
        # The crossing went; the ledger stays, every row as it was.
        assert await conn.fetchval("SELECT count(*) FROM stock_crossing") == 0
        assert await conn.fetch("SELECT * FROM stock_movement ORDER BY id") == ledger
        # A new change is new events only.
        assert await conn.fetchrow(ADJUST, b, 1, "again")
        fresh = await stock_events.read_after(conn, last, 10)
        assert not isinstance(fresh, stock_events.Expired)
        assert [(e.kind, e.quantity) for e in fresh] == [("ADJUSTED", 1), ("BACK_IN_STOCK", 1)]
        report = await check(conn)
        assert report.ok, report.problems
    finally:
        await conn.close()


async def test_check_reports_a_feed_that_does_not_match_its_ledger(postgres_url):
    from inventory_graphql.inventory.catalog import CREATE
    from tests.support.database import create_database

    url = await create_database(postgres_url)  # its own database: it is broken on purpose
    conn = await asyncpg.connect(url)
    try:
        sku = new_sku()
        await conn.fetchrow(CREATE, sku, "a", 3)
        for _ in range(3):
            assert await conn.fetchrow(ADJUST, sku, 1, "more")
        assert (await check(conn)).ok
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM stock_event ORDER BY id")]
        # What an operator (or a bug) could do to the ledger behind the service's back.
        await conn.execute("ALTER TABLE stock_movement DISABLE TRIGGER stock_movement_append_only")
        await conn.execute(
            "UPDATE stock_movement SET quantity_after = quantity_after + 1 WHERE id = $1", ids[1]
        )
        problems = (await check(conn)).problems
        assert any("stock events: event" in p and f"event {ids[1]} " in p for p in problems)
        await conn.execute("ALTER TABLE stock_movement DISABLE TRIGGER stock_movement_feed")
        unplaced = await conn.fetchval(
            "INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, "
            "reason) SELECT product_id, 'ADJUST', 0, 0, 'x' FROM stock_movement WHERE id = $1 "
            "RETURNING id",
            ids[0],
        )
        problems = (await check(conn)).problems
        assert any(
            f"ledger row {unplaced} (ADJUST) has no place in the feed" in p for p in problems
        )
        await conn.execute(
            "INSERT INTO stock_crossing SELECT id, feed_key, product_id, 'LOW_STOCK', "
            "quantity, reserved, version, occurred_at FROM stock_event WHERE id = $1",
            ids[2],
        )
        problems = (await check(conn)).problems
        assert any(f"crossing {ids[2]} (LOW_STOCK) has a ledger row's id" in p for p in problems)
    finally:
        await conn.close()


async def test_one_process_prunes_at_a_time(postgres_url):
    from inventory_graphql.inventory.catalog import CREATE
    from tests.support.database import create_database

    url = await create_database(postgres_url)  # its own feed: a broken lock prunes it all
    conn, other = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        await conn.fetchrow(CREATE, new_sku(), "a", 3)
        await conn.fetchrow(CREATE, new_sku(), "b", 3)
        async with other.transaction():  # another process in the middle of a round
            assert await other.fetchval(stock_events.PRUNE_LOCK)
            assert await stock_events.prune(conn, datetime.now(UTC), 1000) == 0
            assert await stock_events.horizon(conn) == stock_events.START
        assert await stock_events.prune(conn, datetime.now(UTC), 1000) == 2
    finally:
        await conn.close()
        await other.close()
