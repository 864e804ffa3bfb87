"""Waiting-list joins nobody will ever learn of, given back in the background.

A join whose connection broke after its INSERT reached the server may have committed; its
client is answered the retriable error that says nothing was done. When the database
could not be asked at once whether it committed, the join queues here: once the database
answers, its id is claimed (a VOID entry, migration 012) unless it was made, and an entry
that was made leaves the queue, or has its offered hold released, as if its buyer had
done so. An entry a later join of its buyer was answered with is known: it stays.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from inventory_graphql.database import Connection
from inventory_graphql.inventory.give_back import Backlog
from inventory_graphql.inventory.models import ReservationStatus
from inventory_graphql.inventory.reservations import settle
from inventory_graphql.inventory.transactions import in_transaction

BATCH = 200
# Joins kept while the database is away; past this they are dropped with a warning (an
# offered hold still ends at its expiry; a WAITING entry stays until offered or left).
MAX_WAITING = 10_000


@dataclass(frozen=True)
class Join:
    """A join in doubt: the id its entry was inserted with, and what it asked for."""

    entry_id: uuid.UUID
    sku: str
    buyer: str
    quantity: int


# Claims each join's id unless its entry was made. The insert waits on the primary key for
# any transaction still inserting that id; then it conflicts (the entry committed) or
# takes the id for good (a late commit of the same id fails on the key). A sku with no
# product had no entry made for it: nothing to claim.
VOID_UNLESS_JOINED = """
INSERT INTO waitlist_entry (id, product_id, buyer, quantity, status, resolved_at)
SELECT j.id, p.id, j.buyer, j.quantity, 'VOID', now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[]) AS j(id, sku, buyer, quantity)
JOIN product p ON p.sku = j.sku
ON CONFLICT (id) DO NOTHING
"""

# The products of those entries still WAITING and unknown to their buyers, locked first
# (sku order), as every writer of a queue does.
LOCK_QUEUES = """
SELECT p.id FROM product p
WHERE p.id IN (SELECT product_id FROM waitlist_entry
               WHERE id = any($1::uuid[]) AND status = 'WAITING' AND NOT rejoined)
ORDER BY p.sku
FOR UPDATE
"""

# As a leave: the entries leave, and their units leave `waiting`, in one statement (the
# product trigger may then offer the next head).
LEAVE_UNTOLD = """
WITH left_queue AS (
    UPDATE waitlist_entry SET status = 'LEFT', resolved_at = now()
    WHERE id = any($1::uuid[]) AND status = 'WAITING' AND NOT rejoined
    RETURNING product_id, quantity
), per_product AS (
    SELECT product_id, sum(quantity)::int AS quantity FROM left_queue GROUP BY product_id
), moved AS (
    UPDATE product p SET waiting = p.waiting - pp.quantity, updated_at = now()
    FROM per_product pp WHERE p.id = pp.product_id
)
SELECT count(*)::int FROM left_queue
"""

# An entry offered its hold in the join's own transaction (or later): the hold goes back
# as a release does (settled below, in the same transaction).
RELEASE_OFFERED = """
UPDATE reservation r SET status = 'RELEASED', resolved_at = now()
FROM waitlist_entry w
WHERE w.id = any($1::uuid[]) AND w.status = 'OFFERED' AND NOT w.rejoined
  AND r.id = w.reservation_id AND r.status = 'PENDING'
RETURNING r.id
"""


def columns(joins: Sequence[Join]) -> tuple[list[uuid.UUID], list[str], list[str], list[int]]:
    """VOID_UNLESS_JOINED's arguments."""
    return (
        [j.entry_id for j in joins],
        [j.sku for j in joins],
        [j.buyer for j in joins],
        [j.quantity for j in joins],
    )


async def give_back(pool: asyncpg.Pool, joins: Sequence[Join]) -> int:
    """Claim these joins' ids, and undo the entries that were made: they leave the queue,
    or their offered holds are released. Returns how many entries were undone."""
    ids = [join.entry_id for join in joins]

    async def undo(conn: Connection) -> int:
        await conn.execute(VOID_UNLESS_JOINED, *columns(joins))
        # Leaving first: a hold released below then goes on to whoever still waits.
        await conn.execute(LOCK_QUEUES, ids)
        left: int = await conn.fetchval(LEAVE_UNTOLD, ids)
        released = [row["id"] for row in await conn.fetch(RELEASE_OFFERED, ids)]
        if released:
            await settle(conn, released, ReservationStatus.RELEASED)
        return left + len(released)

    return await in_transaction(pool, undo)


class JoinGiveBack(Backlog[Join]):
    def __init__(self, pool: asyncpg.Pool, *, max_backoff: float = 2.0) -> None:
        super().__init__(
            functools.partial(give_back, pool),
            what="waiting-list joins",
            batch=BATCH,
            max_waiting=MAX_WAITING,
            max_backoff=max_backoff,
        )
