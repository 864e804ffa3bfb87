"""The stock event feed: reading it in order, from a cursor (migration 008 writes it).

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

    def to_json(self) -> dict[str, Any]:
        """The event as the GraphQL type StockEvent shows it (webhook bodies carry this)."""
        return {
            "cursor": str(self.cursor),
            "kind": self.kind,
            "sku": self.sku,
            "quantityDelta": self.quantity_delta,
            "reservedDelta": self.reserved_delta,
            "quantity": self.quantity,
            "reserved": self.reserved,
            "available": self.available,
            "version": self.version,
            "reservationId": None if self.reservation_id is None else str(self.reservation_id),
            "reason": self.reason,
            "reference": self.reference,
            "actor": self.actor,
            "occurredAt": self.occurred_at.isoformat(),
        }


async def read_page(conn: Connection, after: Cursor, limit: int) -> list[StockEvent]:
    """Up to `limit` final events after `after`, in feed order."""
    rows = await conn.fetch(PAGE, after.feed_key, after.id, limit)
    return [StockEvent.from_row(r) for r in rows]


async def horizon(conn: Connection) -> Cursor:
    """The last pruned place: cursors before it have lost events to retention."""
    row = await conn.fetchrow(HORIZON)
    return Cursor(row["feed_key"], row["id"])
