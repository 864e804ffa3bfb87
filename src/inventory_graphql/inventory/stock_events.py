"""The stock event feed: reading it in order, from a cursor (migrations 008 and 011).

A cursor names an event's place in the feed: its feed_key and id ("<feed_key>.<id>").
Clients treat it as opaque. Reading after a cursor returns only final events (of ended
transactions), so a reader that follows the cursors it is given sees every committed
event exactly once, and never one that rolled back.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from inventory_graphql.database import Connection

# The feed's page, with each event's sku; stock_event_page serves only final events.
PAGE = """
SELECT e.feed_key, e.id, e.kind::text AS kind, p.sku,
       e.quantity_delta, e.reserved_delta, e.quantity, e.reserved, e.version,
       e.reservation_id, e.reason, e.reference, e.actor, e.occurred_at
FROM stock_event_page($1::xid8, $2::bigint, $3::int) e
JOIN product p ON p.id = e.product_id
ORDER BY e.feed_key, e.id
"""

# Where the pruned prefix ends: a cursor before it has lost events.
HORIZON = "SELECT feed_key, id FROM stock_event_horizon"

# Retention: one process prunes at a time (the others skip a round).
PRUNE_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('inventory.event_prune'), 0)"

# Moves the horizon past the feed's oldest final events older than $1, at most $2 of them,
# as a prefix in feed order (it stops at the first event still inside the retention), and
# deletes the threshold crossings it passed, in one transaction: a reader that checks the
# horizon after reading a page knows whether the page could have lost events. The ledger
# rows it passes stay (the ledger is never pruned: migration 011); readers start at the
# horizon, and a cursor before it is expired.
PRUNE = """
WITH head AS (
    SELECT e.feed_key, e.id,
           bool_and(e.occurred_at < $1) OVER (ORDER BY e.feed_key, e.id) AS old
    FROM (SELECT s.feed_key, s.id, s.occurred_at
          FROM stock_event s CROSS JOIN stock_event_horizon h
          WHERE (s.feed_key, s.id) > (h.feed_key, h.id)
            AND s.feed_key < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY s.feed_key, s.id LIMIT $2) AS e
), last AS (
    SELECT feed_key, id FROM head WHERE old ORDER BY feed_key DESC, id DESC LIMIT 1
), moved AS (
    UPDATE stock_event_horizon h SET feed_key = last.feed_key, id = last.id, pruned_at = now()
    FROM last RETURNING h.id
), gone AS (
    DELETE FROM stock_crossing c USING last
    WHERE (c.feed_key, c.id) <= (last.feed_key, last.id)
    RETURNING c.id
)
SELECT (SELECT count(*) FROM gone) AS crossings,
       (SELECT count(*) FROM head WHERE old) AS passed
"""

_CURSOR = re.compile(r"(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,18})")
MAX_FEED_KEY = 2**64 - 1
MAX_ID = 2**63 - 1


@dataclass(frozen=True, order=True)
class Cursor:
    """A place in the feed: after every event at or before (feed_key, id)."""

    feed_key: int
    id: int

    def __str__(self) -> str:
        return f"{self.feed_key}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor `text` names, or None when it names none."""
        match = _CURSOR.fullmatch(text)
        if match is None:
            return None
        key, id_ = int(match[1]), int(match[2])
        if key > MAX_FEED_KEY or id_ > MAX_ID:
            return None
        return cls(key, id_)


START = Cursor(0, 0)


class Slot:
    """One open feed subscription; `release` gives it back, once."""

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.taken -= 1


class Slots:
    """The per-process cap on open feed subscriptions (each reads pages from the pool)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> Slot | None:
        if self.taken >= self.limit:
            return None
        self.taken += 1
        return Slot(self)


@dataclass(frozen=True)
class Expired:
    """The cursor is before the horizon: events after it were pruned (re-sync)."""

    cursor: Cursor
    horizon: Cursor

    @property
    def message(self) -> str:
        return (
            f"cursor {self.cursor} is older than the feed's retention (events up to "
            f"{self.horizon} were pruned): re-read the current stock and follow the feed "
            "from a new cursor"
        )


@dataclass(frozen=True)
class StockEvent:
    cursor: Cursor
    kind: str
    sku: str
    quantity_delta: int
    reserved_delta: int
    quantity: int  # the product's numbers right after this event
    reserved: int
    version: int
    reservation_id: uuid.UUID | None
    reason: str | None
    reference: str | None
    actor: str | None
    occurred_at: datetime

    @property
    def available(self) -> int:
        return self.quantity - self.reserved

    @classmethod
    def from_row(cls, row: Any) -> StockEvent:
        return cls(
            Cursor(row["feed_key"], row["id"]),
            row["kind"],
            row["sku"],
            row["quantity_delta"],
            row["reserved_delta"],
            row["quantity"],
            row["reserved"],
            row["version"],
            row["reservation_id"],
            row["reason"],
            row["reference"],
            row["actor"],
            row["occurred_at"],
        )


async def read_page(conn: Connection, after: Cursor, limit: int) -> list[StockEvent]:
    """Up to `limit` final events after `after`, in feed order."""
    rows = await conn.fetch(PAGE, after.feed_key, after.id, limit)
    return [StockEvent.from_row(r) for r in rows]


async def horizon(conn: Connection) -> Cursor:
    """The last pruned place: cursors before it have lost events to retention."""
    row = await conn.fetchrow(HORIZON)
    assert row is not None, "migration 008 inserts the horizon's one row"
    return Cursor(row["feed_key"], row["id"])


async def read_after(
    conn: Connection, after: Cursor | None, limit: int
) -> list[StockEvent] | Expired:
    """Up to `limit` final events after `after` (None: from the oldest kept), or Expired
    when events after it were pruned. The page is read before the horizon: the pruner
    moves the horizon in the transaction that deletes, so a horizon still at or before
    `after` when read after the page proves the page lost nothing."""
    if after is None:
        after = await horizon(conn)
    events = await read_page(conn, after, limit)
    edge = await horizon(conn)
    if after < edge:
        return Expired(after, edge)
    return events


async def prune(conn: Connection, older_than: datetime, batch: int) -> int:
    """Move the horizon past up to `batch` final events older than `older_than` (deleting
    the crossings among them); how many it passed (0 also when another process is pruning
    now)."""
    async with conn.transaction():
        if not await conn.fetchval(PRUNE_LOCK):
            return 0
        row = await conn.fetchrow(PRUNE, older_than, batch)
        assert row is not None, "an aggregate returns a row"
        passed: int = row["passed"]
        return passed
