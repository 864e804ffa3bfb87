"""The waiting list in the service: joining, leaving, and freed units handed to its head.

Units freed on a sku (a release, a partial release, an expiry, a restock) go to its
WAITING entries in join order in the transaction that frees them; while the head does
not fit nobody behind it is served, and nobody outside the queue can reserve. Every
number is checked against the database and `check` after each step.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta

import asyncpg
import pytest

from inventory_graphql.config import Settings
from inventory_graphql.database import connect_pool
from inventory_graphql.inventory.models import (
    ADMIN,
    ANONYMOUS,
    BuyerRequired,
    Caller,
    InsufficientStock,
    InvalidInput,
    LineRequest,
    Product,
    ProductNotFound,
    PurchaseLimitExceeded,
    Reservation,
    ReservationStatus,
    WaitlistEntry,
    WaitlistEntryNotFound,
    WaitlistStatus,
)
from inventory_graphql.inventory.reconcile import reconcile
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.inventory.waitlist import QueueReads
from tests.support.database import check, create_database, stock, told_equals_held

WAITING, OFFERED, LEFT = WaitlistStatus.WAITING, WaitlistStatus.OFFERED, WaitlistStatus.LEFT


def buyer(n: int | str) -> Caller:
    return Caller(buyer=f"buyer-{n}")


async def sold_out(service: InventoryService, sku: str, units: int) -> Reservation:
    """An anonymous hold of every unit: the sku is sold out until it is freed."""
    held = await service.reserve([LineRequest(sku, units)], ttl_seconds=600)
    assert isinstance(held, Reservation)
    return held


async def join(service: InventoryService, sku: str, quantity: int, who: Caller) -> WaitlistEntry:
    entry = await service.join_waitlist(sku, quantity, caller=who)
    assert isinstance(entry, WaitlistEntry), entry
    return entry


async def entries(db: asyncpg.Connection, sku: str) -> list[tuple[str, int, str, int | None]]:
    """The product's entries in join order: (buyer, quantity, status, held units of its
    offered hold)."""
    rows = await db.fetch(
        """
        SELECT w.buyer, w.quantity, w.status::text,
               (SELECT l.quantity - l.confirmed - l.released FROM reservation_line l
                WHERE l.reservation_id = w.reservation_id) AS held
        FROM waitlist_entry w JOIN product p ON p.id = w.product_id
        WHERE p.sku = $1 ORDER BY w.seq
        """,
        sku,
    )
    return [tuple(r) for r in rows]


async def units(db: asyncpg.Connection, sku: str) -> tuple[int, int, int]:
    """quantity, reserved, available."""
    numbers = await stock(db, sku)
    return numbers["quantity"], numbers["reserved"], numbers["available"]


async def waiting(db: asyncpg.Connection, sku: str) -> int:
    value: int = await db.fetchval("SELECT waiting FROM product WHERE sku = $1", sku)
    return value


async def past_expiry(db: asyncpg.Connection, hold_id: str) -> None:
    await db.execute(
        "UPDATE reservation SET created_at = now() - interval '1 hour', "
        "expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        hold_id,
    )


async def offered_hold(service: InventoryService, entry: WaitlistEntry, who: Caller) -> Reservation:
    """The hold an OFFERED entry was given, as its buyer reads it."""
    now = await service.waitlist_entry(entry.id, caller=who)
    assert now is not None and now.status is OFFERED and now.reservation_id is not None
    hold = await service.reservation(now.reservation_id, caller=who)
    assert hold is not None
    return hold


async def test_joining_when_nobody_waits_and_the_units_are_there_offers_the_hold_at_once(
    service, db, make_product
):
    sku = await make_product(5)
    entry = await service.join_waitlist(sku, 2, caller=buyer(1))
    assert isinstance(entry, WaitlistEntry)
    assert (entry.status, entry.position, entry.quantity, entry.sku) == (OFFERED, None, 2, sku)
    hold = await service.reservation(entry.reservation_id, caller=buyer(1))
    assert hold is not None and hold.status is ReservationStatus.PENDING
    assert [(line.sku, line.held) for line in hold.lines] == [(sku, 2)]
    # The waiting list's hold lasts INVENTORY_WAITLIST_HOLD_SECONDS (300 by default).
    lasts = hold.expires_at - hold.created_at
    assert timedelta(seconds=299) <= lasts <= timedelta(seconds=301)
    # It is the buyer's: nobody else sees it.
    assert await service.reservation(hold.id, caller=buyer(2)) is None
    assert await service.reservation(hold.id) is None
    assert await units(db, sku) == (5, 2, 3)
    assert await waiting(db, sku) == 0
    assert (await check(db)).ok


async def test_freed_units_go_to_the_queue_in_join_order_and_strict_fifo(service, db, make_product):
    sku = await make_product(10)
    public = await sold_out(service, sku, 10)
    a = await join(service, sku, 3, buyer("a"))
    b = await join(service, sku, 5, buyer("b"))
    c = await join(service, sku, 1, buyer("c"))
    assert [(e.status, e.position) for e in (a, b, c)] == [(WAITING, 1), (WAITING, 2), (WAITING, 3)]
    assert await waiting(db, sku) == 9
    assert (await check(db)).ok

    # A restock of one unit: the head wants 3, so nobody is served, not even c behind it.
    restocked = await service.adjust_stock(sku, 1, "found one")
    assert restocked.available == 1 and restocked.waiting == 9
    assert [e[2] for e in await entries(db, sku)] == ["WAITING"] * 3
    # Nobody outside the queue takes that unit: while anyone waits, nothing is available.
    refused = await service.reserve([LineRequest(sku, 1)])
    assert refused == InsufficientStock(sku, 1, 0)
    refused_buyer = await service.reserve([LineRequest(sku, 1)], caller=buyer("d"))
    assert refused_buyer == InsufficientStock(sku, 1, 0)
    assert (await check(db)).ok

    # Two units back from the public hold: 3 available, the head gets its hold.
    partly = await service.release(public.id, [LineRequest(sku, 2)])
    assert isinstance(partly, Reservation) and partly.status is ReservationStatus.PENDING
    assert await entries(db, sku) == [
        ("buyer-a", 3, "OFFERED", 3),
        ("buyer-b", 5, "WAITING", None),
        ("buyer-c", 1, "WAITING", None),
    ]
    assert (await service.waitlist_entry(b.id, caller=buyer("b"))).position == 1
    assert (await service.waitlist_entry(c.id, caller=buyer("c"))).position == 2
    assert await units(db, sku) == (11, 11, 0)
    assert await waiting(db, sku) == 6
    assert (await check(db)).ok

    # The rest of the public hold back (8): b's 5 and c's 1 in that order, 2 left over.
    assert isinstance(await service.release(public.id), Reservation)
    assert await entries(db, sku) == [
        ("buyer-a", 3, "OFFERED", 3),
        ("buyer-b", 5, "OFFERED", 5),
        ("buyer-c", 1, "OFFERED", 1),
    ]
    assert await waiting(db, sku) == 0
    assert (await stock(db, sku))["available"] == 2
    # Nobody waits: public reserves work again.
    assert isinstance(await service.reserve([LineRequest(sku, 2)]), Reservation)
    for entry, who in ((a, "a"), (b, "b"), (c, "c")):
        hold = await offered_hold(service, entry, buyer(who))
        assert hold.lines[0].held == entry.quantity
    assert (await check(db)).ok


async def test_an_offered_hold_that_expires_or_is_released_goes_on_to_the_next_entry(
    service, db, make_product
):
    sku = await make_product(2)
    first = await join(service, sku, 2, buyer(1))  # offered at once
    second = await join(service, sku, 2, buyer(2))
    third = await join(service, sku, 1, buyer(3))
    assert (first.status, second.position, third.position) == (OFFERED, 1, 2)

    hold = await offered_hold(service, first, buyer(1))
    await past_expiry(db, hold.id)
    assert await service.expire_due() >= 1
    assert (await service.reservation(hold.id, caller=buyer(1))).status is (
        ReservationStatus.EXPIRED
    )
    # The expiry freed 2: the second entry's hold, in the same transaction.
    assert [e[2] for e in await entries(db, sku)] == ["OFFERED", "OFFERED", "WAITING"]
    second_hold = await offered_hold(service, second, buyer(2))
    assert (await service.waitlist_entry(third.id, caller=buyer(3))).position == 1
    assert (await check(db)).ok

    # Its buyer releases it: the third entry (1 unit) is offered, one unit is left over.
    assert isinstance(await service.release(second_hold.id, caller=buyer(2)), Reservation)
    assert await entries(db, sku) == [
        ("buyer-1", 2, "OFFERED", 0),
        ("buyer-2", 2, "OFFERED", 0),
        ("buyer-3", 1, "OFFERED", 1),
    ]
    assert await units(db, sku) == (2, 1, 1)
    assert (await check(db)).ok


async def test_one_waiting_entry_per_buyer_per_sku(service, db, make_product):
    sku = await make_product(1)
    await sold_out(service, sku, 1)
    entry = await join(service, sku, 2, buyer(1))
    # Joining again with the same quantity answers the same entry (a retried join).
    assert await service.join_waitlist(sku, 2, caller=buyer(1)) == entry
    other = await service.join_waitlist(sku, 3, caller=buyer(1))
    assert isinstance(other, InvalidInput) and other.field == "quantity"
    assert await waiting(db, sku) == 2
    # Another buyer, or the same buyer on another sku, is another entry.
    assert (await join(service, sku, 1, buyer(2))).position == 2
    elsewhere = await make_product(0)
    assert (await join(service, elsewhere, 2, buyer(1))).position == 1
    # Once it has left, the buyer may join again, at the back of the queue.
    left = await service.leave_waitlist(entry.id, caller=buyer(1))
    assert isinstance(left, WaitlistEntry) and (left.status, left.position) == (LEFT, None)
    again = await join(service, sku, 3, buyer(1))
    assert again.id != entry.id and again.position == 2
    assert await waiting(db, sku) == 4
    assert (await check(db)).ok


async def test_join_refusals(service, db, make_product):
    sku = await make_product(0)
    assert await service.join_waitlist(sku, 1, caller=ANONYMOUS) == BuyerRequired(sku)
    assert await service.join_waitlist(sku, 1, caller=ADMIN) == BuyerRequired(sku)
    assert await service.join_waitlist("NOPE-none", 1, caller=buyer(1)) == ProductNotFound(
        "NOPE-none"
    )
    for quantity in (0, -1, Settings().max_units_per_line + 1):
        refused = await service.join_waitlist(sku, quantity, caller=buyer(1))
        assert isinstance(refused, InvalidInput) and refused.field == "quantity"
    malformed = await service.join_waitlist("no spaces", 1, caller=buyer(1))
    assert isinstance(malformed, InvalidInput) and malformed.field == "sku"
    assert await entries(db, sku) == [] and await waiting(db, sku) == 0


async def test_the_purchase_limit_applies_at_join(service, db, make_product):
    sku = await make_product(3)
    limited = await service.set_purchase_limit(sku, 2)
    assert limited.purchase_limit == 2
    first = await join(service, sku, 1, buyer(1))  # offered at once: buyer 1 holds 1
    assert first.status is OFFERED
    assert isinstance(await service.reserve([LineRequest(sku, 2)], caller=buyer(9)), Reservation)
    # Sold out now; buyer 1 holds 1 of a limit of 2.
    refused = await service.join_waitlist(sku, 2, caller=buyer(1))
    assert refused == PurchaseLimitExceeded(sku, 2, 1)
    assert (await join(service, sku, 1, buyer(1))).status is WAITING
    refused_other = await service.join_waitlist(sku, 3, caller=buyer(2))
    assert refused_other == PurchaseLimitExceeded(sku, 2, 0)
    assert await waiting(db, sku) == 1
    assert (await check(db)).ok


async def test_leaving(service, db, make_product):
    sku = await make_product(4)
    public = await sold_out(service, sku, 4)
    head = await join(service, sku, 3, buyer(1))
    behind = await join(service, sku, 1, buyer(2))
    assert isinstance(await service.release(public.id, [LineRequest(sku, 1)]), Reservation)
    # One unit is free but the head wants 3: behind waits behind it.
    assert [e[2] for e in await entries(db, sku)] == ["WAITING", "WAITING"]

    # Only its buyer (or an admin) can leave it, or see it; others are told it is unknown.
    for stranger in (buyer(2), ANONYMOUS):
        assert await service.leave_waitlist(head.id, caller=stranger) == WaitlistEntryNotFound(
            head.id
        )
        assert await service.waitlist_entry(head.id, caller=stranger) is None
    assert await service.leave_waitlist("not-a-uuid", caller=buyer(1)) == WaitlistEntryNotFound(
        "not-a-uuid"
    )
    unknown = str(uuid.uuid4())
    assert await service.leave_waitlist(unknown, caller=ADMIN) == WaitlistEntryNotFound(unknown)

    # The head leaves: the next one fits the free unit and is offered in the same step.
    left = await service.leave_waitlist(head.id, caller=buyer(1))
    assert isinstance(left, WaitlistEntry) and (left.status, left.position) == (LEFT, None)
    assert await entries(db, sku) == [("buyer-1", 3, "LEFT", None), ("buyer-2", 1, "OFFERED", 1)]
    assert await waiting(db, sku) == 0
    # Leaving twice answers the entry as it is; an offered entry stays offered.
    assert await service.leave_waitlist(head.id, caller=buyer(1)) == left
    offered = await service.leave_waitlist(behind.id, caller=ADMIN)
    assert isinstance(offered, WaitlistEntry) and offered.status is OFFERED
    assert await service.waitlist_entry(behind.id, caller=buyer(2)) == offered
    assert (await check(db)).ok


async def test_concurrent_joins_get_distinct_positions_and_concurrent_leaves_count_once(
    service, db, make_product
):
    sku = await make_product(1)
    await sold_out(service, sku, 1)
    joined = await asyncio.gather(*(join(service, sku, 1, buyer(n)) for n in range(40)))
    assert sorted(e.position or 0 for e in joined) == list(range(1, 41))
    assert await waiting(db, sku) == 40
    # Everyone leaves twice at once: each entry leaves once, `waiting` drops to 0.
    leaves = [service.leave_waitlist(e.id, caller=buyer(n)) for n, e in enumerate(joined)] * 2
    answers = await asyncio.gather(*leaves)
    assert {a.status for a in answers} == {LEFT}
    assert await waiting(db, sku) == 0
    assert (await check(db)).ok


@pytest.fixture
async def scratch(postgres_url: str):
    """A database of its own, for breaking on purpose, and a service on it."""
    url = await create_database(postgres_url)
    conn = await asyncpg.connect(url)
    async with connect_pool(url, Settings()) as pool:
        yield conn, InventoryService(pool, Settings(coalesce_reservations=False))
    await conn.close()


async def test_check_finds_a_broken_queue_and_buyers_above_a_limit(scratch):
    db, service = scratch
    await service.create_product("W-1", "Waited for", 0)
    await service.create_product("W-2", "Limited", 5)

    async def problems() -> list[str]:
        return (await reconcile(db, 5)).problems

    assert await problems() == []
    # An entry added behind the product's back: `waiting` does not count it.
    await db.execute(
        "INSERT INTO waitlist_entry (product_id, buyer, quantity) "
        "SELECT id, 'b', 2 FROM product WHERE sku = 'W-1'"
    )
    assert await problems() == ["W-1: waiting 0, but its WAITING entries want 2"]
    # Counted now, but units came back with the offer trigger off: the head fits and
    # was not offered.
    await db.execute("ALTER TABLE product DISABLE TRIGGER product_offer_to_waiting")
    await db.execute("UPDATE product SET waiting = 2 WHERE sku = 'W-1'")
    assert isinstance(await service.adjust_stock("W-1", 3, "restock"), object)
    await db.execute("ALTER TABLE product ENABLE TRIGGER product_offer_to_waiting")
    assert await problems() == [
        "W-1: the waiting list's head wants 2 of 3 available; entries behind it offered: 0"
    ]
    # An entry behind it marked OFFERED with a hold that is not its own.
    stranger = await service.reserve([LineRequest("W-2", 1)])
    assert isinstance(stranger, Reservation)
    await db.execute(
        "INSERT INTO waitlist_entry (product_id, buyer, quantity, status, reservation_id, "
        "resolved_at) SELECT id, 'c', 1, 'OFFERED', $1::uuid, now() FROM product "
        "WHERE sku = 'W-1'",
        stranger.id,
    )
    found = await problems()
    assert found[0] == (
        "W-1: the waiting list's head wants 2 of 3 available; entries behind it offered: 1"
    )
    assert found[1].startswith("waiting-list entry ") and "without its hold" in found[1]
    assert len(found) == 2
    # Any product change serves the queue (the trigger is back): the head gets its hold.
    await service.adjust_stock("W-1", 1, "restock")
    assert len(await problems()) == 1  # the forged offer stays forged

    # A limit lowered below what a buyer already holds: what it had stands (counted).
    held = await service.reserve([LineRequest("W-2", 3)], caller=Caller("x"))
    assert isinstance(held, Reservation)
    await service.set_purchase_limit("W-2", 2)
    report = await reconcile(db, 5)
    assert report.problems[1:] == [] and report.above_lowered_limit == 1
    # Had the limit been in force when that hold was made, the buyer was let past it.
    await db.execute(
        "UPDATE product SET purchase_limit_set_at = now() - interval '1 hour' WHERE sku = 'W-2'"
    )
    assert (await problems())[1:] == [
        "W-2: buyer x holds or bought 3, above the limit of 2 with a hold made since it was set"
    ]


async def test_a_restock_answers_the_product_as_the_queue_left_it(service, db, make_product):
    sku = await make_product(1)
    await sold_out(service, sku, 1)
    entry = await join(service, sku, 2, buyer(1))
    restocked = await service.adjust_stock(sku, 2, "restock")
    # Told what the transaction left: the two units went to the queue's hold.
    assert isinstance(restocked, Product)
    assert (restocked.quantity, restocked.reserved, restocked.waiting) == (3, 3, 0)
    assert await stock(db, sku) == {
        "quantity": 3,
        "reserved": 3,
        "available": 0,
        "version": restocked.version,
    }
    offered = await service.waitlist_entry(entry.id, caller=buyer(1))
    assert offered is not None and offered.status is OFFERED


async def test_a_head_over_a_limit_lowered_since_it_joined_leaves_when_its_turn_comes(
    service, db, make_product
):
    sku = await make_product(2)
    blocker = await sold_out(service, sku, 2)
    await service.set_purchase_limit(sku, 3)
    first = await join(service, sku, 2, buyer(1))
    second = await join(service, sku, 1, buyer(2))
    assert (first.position, second.position) == (1, 2)
    await service.set_purchase_limit(sku, 1)  # buyer 1 now wants more than a buyer may have
    assert isinstance(await service.release(blocker.id), Reservation)
    gone = await service.waitlist_entry(first.id, caller=buyer(1))
    served = await service.waitlist_entry(second.id, caller=buyer(2))
    assert gone is not None and (gone.status, gone.reservation_id) == (LEFT, None)
    assert served is not None and served.status is OFFERED
    assert await waiting(db, sku) == 0
    assert (await stock(db, sku))["reserved"] == 1
    assert (await check(db)).ok


async def test_acceptance_freed_units_go_to_the_queue_while_public_reserves_race(
    pool, db, make_product
):
    """The issue's acceptance: 100 waiting entries; 10 holds released while 500 public
    reserves race: the 10 units go to positions 1-10 in order and every public reserve is
    refused; the offered holds expire and pass to positions 11-20."""
    coalesced = InventoryService(pool, Settings(coalesce_reservations=True))
    async with coalesced.running(sweep=False):
        sku = await make_product(10)
        public = [await sold_out(coalesced, sku, 1) for _ in range(10)]
        queue = [await join(coalesced, sku, 1, buyer(f"{n:03}")) for n in range(100)]
        assert [e.position for e in queue] == list(range(1, 101))

        def public_reserve(n: int):
            # Anonymous shoppers and buyers alike.
            who = buyer(f"public-{n}") if n % 2 else ANONYMOUS
            return coalesced.reserve([LineRequest(sku, 1)], caller=who)

        work = [coalesced.release(h.id) for h in public] + [public_reserve(n) for n in range(500)]
        random.Random(15).shuffle(work)
        answers = await asyncio.gather(*work)
        released = [a for a in answers if isinstance(a, Reservation)]
        assert len(released) == 10
        assert {a.status for a in released} == {ReservationStatus.RELEASED}
        refused = [a for a in answers if not isinstance(a, Reservation)]
        assert refused == [InsufficientStock(sku, 1, 0)] * 500

        async def offers() -> list[Reservation]:
            """The holds offered so far, in join order, as their buyers read them."""
            found = []
            for n, entry in enumerate(queue):
                now = await coalesced.waitlist_entry(entry.id, caller=buyer(f"{n:03}"))
                assert now is not None
                if now.status is OFFERED:
                    found.append(await offered_hold(coalesced, entry, buyer(f"{n:03}")))
            return found

        async def statuses() -> list[tuple[WaitlistStatus, int | None]]:
            found = []
            for n, entry in enumerate(queue):
                now = await coalesced.waitlist_entry(entry.id, caller=buyer(f"{n:03}"))
                assert now is not None
                found.append((now.status, now.position))
            return found

        async def offered_in_ledger_order() -> list[str]:
            rows = await db.fetch(
                "SELECT m.reservation_id::text FROM stock_movement m "
                "JOIN product p ON p.id = m.product_id "
                "WHERE p.sku = $1 AND m.reason = 'waiting list' ORDER BY m.id",
                sku,
            )
            return [r[0] for r in rows]

        first = await offers()
        assert await statuses() == [(OFFERED, None)] * 10 + [(WAITING, n) for n in range(1, 91)]
        assert [h.status for h in first] == [ReservationStatus.PENDING] * 10
        # In order: each unit went to the next entry as it came back.
        assert await offered_in_ledger_order() == [h.id for h in first]
        assert await units(db, sku) == (10, 10, 0) and await waiting(db, sku) == 90
        await told_equals_held(db, [sku], public + first)
        assert (await check(db)).ok

        # The offers lapse: each expiry hands its unit to the next entry.
        for hold in first:
            await past_expiry(db, hold.id)
        # The database is shared: other tests' due holds may expire in the same sweep.
        assert await coalesced.expire_due() >= 10
        lapsed = [await coalesced.reservation(h.id, caller=ADMIN) for h in first]
        assert [h.status if h else None for h in lapsed] == [ReservationStatus.EXPIRED] * 10
        second = (await offers())[10:]
        assert await statuses() == [(OFFERED, None)] * 20 + [(WAITING, n) for n in range(1, 81)]
        assert await offered_in_ledger_order() == [h.id for h in first + second]
        assert await units(db, sku) == (10, 10, 0) and await waiting(db, sku) == 80
        await told_equals_held(db, [sku], public + first + second)
        assert (await check(db)).ok


async def test_watchers_of_a_queue_share_one_read_of_it(pool, service, db, make_product):
    """A queue that moves is read once for every watcher that heard of the move before
    that read started (not once per watcher); one who heard later gets a read of its own."""
    sku = await make_product(1)
    await sold_out(service, sku, 1)
    entries_in_line = [await join(service, sku, 1, buyer(n)) for n in range(3)]

    class Counted(QueueReads):
        reads = 0

        async def _read(self, sku: str) -> dict[str, int]:
            Counted.reads += 1
            return await super()._read(sku)

    reads = Counted(pool)
    heard = time.monotonic()
    answers = await asyncio.gather(*(reads.positions(sku, heard) for _ in range(50)))
    expected = {entry.id: n + 1 for n, entry in enumerate(entries_in_line)}
    assert answers == [expected] * 50
    assert Counted.reads == 1
    await service.leave_waitlist(entries_in_line[0].id, caller=buyer(0))
    moved = await reads.positions(sku, time.monotonic())
    assert moved == {entries_in_line[1].id: 1, entries_in_line[2].id: 2}
    assert Counted.reads == 2
