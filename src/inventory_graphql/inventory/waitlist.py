"""The waiting list: joining, leaving, and reading an entry.

Migration 006 does the handing out: whenever a product row changes and leaves units
available while entries wait, its trigger offers the head entry a PENDING hold in the
same transaction (strict FIFO). This module only adds and removes entries, each time
under the product's row lock taken first (the lock every writer of the queue and of a
buyer's tally holds), and moves `product.waiting` with them in the same statement, so
the trigger sees the queue as it now is.

A join's entry id is chosen here, before it runs, so that after a fault the join can be
settled by that id (join_give_back.py): the client is told the entry, or an error that is
then true.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import asyncpg

from inventory_graphql.database import Connection
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.errors import is_database_unavailable
from inventory_graphql.inventory.join_give_back import (
    VOID_UNLESS_JOINED,
    Join,
    JoinGiveBack,
    columns,
)
from inventory_graphql.inventory.models import (
    Caller,
    InvalidInput,
    ProductNotFound,
    PurchaseLimitExceeded,
    WaitlistEntry,
    WaitlistEntryNotFound,
    WaitlistOutcome,
    WaitlistStatus,
)
from inventory_graphql.inventory.transactions import Rollback, in_transaction

log = logging.getLogger(__name__)

LOCK_PRODUCT = "SELECT id, purchase_limit FROM product WHERE sku = $1 FOR UPDATE"

LOCK_PRODUCT_BY_ID = "SELECT id FROM product WHERE id = $1 FOR UPDATE"

# Decided after the product's lock was granted (a new statement: a fresh snapshot), so
# the buyer's WAITING entry and tally are what is committed under that lock. The entry
# is added only when the buyer has none and stays within the limit; `waiting` grows in
# the same statement, and the product trigger then offers the entry its hold at once if
# it is the head and fits. An existing entry answered (a retried join, the same quantity)
# is marked `rejoined`: its buyer knows it now, so no give-back of an earlier join of it
# may undo it.
JOIN = """
WITH existing AS (
    SELECT id, quantity FROM waitlist_entry
    WHERE product_id = $1 AND buyer = $2 AND status = 'WAITING'
), tally AS (
    SELECT CASE WHEN $4::int IS NOT NULL THEN buyer_tally($2, $1) END AS held
), joined AS (
    INSERT INTO waitlist_entry (id, product_id, buyer, quantity)
    SELECT $5, $1, $2, $3 FROM tally t
    WHERE NOT EXISTS (SELECT 1 FROM existing)
      AND ($4::int IS NULL OR t.held + $3 <= $4)
    RETURNING id
), queued AS (
    UPDATE product SET waiting = waiting + $3, updated_at = now()
    WHERE id = $1 AND EXISTS (SELECT 1 FROM joined)
), rejoined AS (
    UPDATE waitlist_entry SET rejoined = true
    WHERE id = (SELECT id FROM existing) AND quantity = $3 AND NOT rejoined
)
SELECT (SELECT id FROM joined) AS joined,
       (SELECT id FROM existing) AS existing,
       (SELECT quantity FROM existing) AS existing_quantity,
       (SELECT held FROM tally) AS held
"""

OWNER = "SELECT product_id, buyer FROM waitlist_entry WHERE id = $1 AND status <> 'VOID'"

# Under the product's lock: an entry still WAITING leaves (once: the guard) and its units
# leave `waiting` in the same statement; the trigger may then offer the next head.
LEAVE = """
WITH left_queue AS (
    UPDATE waitlist_entry SET status = 'LEFT', resolved_at = now()
    WHERE id = $1 AND status = 'WAITING'
    RETURNING product_id, quantity
)
UPDATE product p SET waiting = p.waiting - l.quantity, updated_at = now()
FROM left_queue l WHERE p.id = l.product_id
"""

# An entry as it stands; `position` counts the WAITING entries of its product up to it
# in join order (the queue's index). A VOID entry (a join that was never made) is no
# entry at all.
ENTRY = """
SELECT w.id::text, p.sku, w.buyer, w.quantity, w.status::text AS status,
       w.reservation_id::text, w.created_at,
       CASE WHEN w.status = 'WAITING' THEN (
           SELECT count(*) FROM waitlist_entry o
           WHERE o.product_id = w.product_id AND o.status = 'WAITING' AND o.seq <= w.seq)
       END AS position
FROM waitlist_entry w JOIN product p ON p.id = w.product_id
WHERE w.id = $1 AND w.status <> 'VOID'
"""

# A sku's whole queue, positions by entry id: one read serves every watcher of the sku.
QUEUE = """
SELECT w.id::text, row_number() OVER (ORDER BY w.seq)::int AS position
FROM waitlist_entry w JOIN product p ON p.id = w.product_id
WHERE p.sku = $1 AND w.status = 'WAITING'
"""


def _entry(row: asyncpg.Record) -> WaitlistEntry:
    return WaitlistEntry(
        id=row["id"],
        sku=row["sku"],
        quantity=row["quantity"],
        status=WaitlistStatus(row["status"]),
        position=row["position"],
        reservation_id=row["reservation_id"],
        created_at=row["created_at"],
    )


class Waitlist:
    def __init__(self, pool: asyncpg.Pool, give_back: JoinGiveBack) -> None:
        self._pool = pool
        self._give_back = give_back

    async def join(self, sku: str, quantity: int, buyer: str) -> WaitlistOutcome:
        """Inputs are valid (the service checked them). After a fault of the connection the
        join is settled by its entry id: an entry that committed is answered, whatever the
        error said; otherwise the error is raised, and the entry can no longer be made (or,
        when the database cannot tell now, is given back once it can)."""
        entry_id = uuid.uuid4()

        async def join(conn: Connection) -> WaitlistOutcome:
            product = await conn.fetchrow(LOCK_PRODUCT, sku)
            if product is None:
                return ProductNotFound(sku)
            limit = product["purchase_limit"]
            row = await conn.fetchrow(JOIN, product["id"], buyer, quantity, limit, entry_id)
            assert row is not None, "the statement always returns one row"
            if row["joined"] is not None:
                return await _read(conn, row["joined"])
            if row["existing"] is not None:
                if row["existing_quantity"] == quantity:
                    # Joining again is answered with the entry (a retried join is safe).
                    return await _read(conn, row["existing"])
                return InvalidInput(
                    "quantity",
                    f"you already wait for {row['existing_quantity']} of {sku}: "
                    "leave the waiting list first to wait for another quantity",
                )
            return PurchaseLimitExceeded(sku, limit, row["held"])

        try:
            return await in_transaction(self._pool, join)
        except Exception as error:
            # Any other error was the server's answer to a statement (a lock timeout, a
            # constraint) or ours before COMMIT: the transaction rolled back, nothing to settle.
            if not is_database_unavailable(error):
                raise
            found = await self._settle(Join(entry_id, sku, buyer, quantity), error)
            if found is None:
                raise
            return found

    async def _settle(self, join: Join, error: Exception) -> WaitlistEntry | None:
        """The join's entry if it committed; None if it never will (its id is claimed now,
        or queued to be given back: either way the error is true)."""
        try:
            async with self._pool.acquire() as conn:
                # Statements of their own: the claim commits before the entry is read.
                await conn.execute(VOID_UNLESS_JOINED, *columns([join]))
                row = await conn.fetchrow(ENTRY, join.entry_id)
        except Exception as settle_error:
            log.warning("join failed (%r) and could not be settled: %r", error, settle_error)
            self._give_back.add([join])
            return None
        return None if row is None else _entry(row)

    async def leave(self, entry_id: str, caller: Caller) -> WaitlistOutcome:
        """Only the entry's buyer (or an admin) sees it; others are told it is unknown.
        An entry no longer WAITING is answered as it is: leaving twice is safe."""
        parsed = validation.parse_reservation_id(entry_id)
        if parsed is None:
            return WaitlistEntryNotFound(entry_id)

        async def leave(conn: Connection) -> WaitlistOutcome:
            owner = await conn.fetchrow(OWNER, parsed)
            if owner is None or not caller.owns(owner["buyer"]):
                raise Rollback(WaitlistEntryNotFound(entry_id))
            await conn.execute(LOCK_PRODUCT_BY_ID, owner["product_id"])
            await conn.execute(LEAVE, parsed)
            return await _read(conn, parsed)

        return await in_transaction(self._pool, leave)

    async def entry(self, entry_id: str, caller: Caller) -> WaitlistEntry | None:
        """The entry as it stands; None when unknown, malformed or another buyer's."""
        parsed = validation.parse_reservation_id(entry_id)
        if parsed is None:
            return None
        row = await self._pool.fetchrow(ENTRY, parsed)
        if row is None or not caller.owns(row["buyer"]):
            return None
        return _entry(row)


async def _read(conn: Connection, entry_id: object) -> WaitlistEntry:
    row = await conn.fetchrow(ENTRY, entry_id)
    assert row is not None, "an entry is never deleted"
    return _entry(row)


class QueueReads:
    """Positions in a sku's queue, read once for everyone waiting to hear them.

    When a queue moves, every watcher of the sku wants its new position: reading each
    entry's position costs O(position) per watcher, so a thousand watchers would cost a
    million rows per move. Instead one read of the queue (O(queue)) serves every watcher
    that heard of the move before that read started, so it sees that move.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._reads: dict[str, tuple[float, asyncio.Future[dict[str, int]]]] = {}

    async def positions(self, sku: str, heard_at: float) -> dict[str, int]:
        """The sku's WAITING entries by id, with their positions, as of a read started no
        earlier than `heard_at` (time.monotonic())."""
        current = self._reads.get(sku)
        if current is None or current[0] < heard_at:
            current = (time.monotonic(), asyncio.ensure_future(self._read(sku)))
            self._reads[sku] = current
            current[1].add_done_callback(functools.partial(self._forget, sku, current))
        # Shielded: a watcher that leaves must not cancel the others' read.
        return await asyncio.shield(current[1])

    async def _read(self, sku: str) -> dict[str, int]:
        return {row["id"]: row["position"] for row in await self._pool.fetch(QUEUE, sku)}

    def _forget(
        self,
        sku: str,
        read: tuple[float, asyncio.Future[dict[str, int]]],
        _: asyncio.Future[dict[str, int]],
    ) -> None:
        if self._reads.get(sku) is read:
            del self._reads[sku]
        if not read[1].cancelled():
            read[1].exception()  # retrieved: each awaiting watcher got it already
