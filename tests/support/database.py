"""Reading what the database holds, for assertions: fresh databases, new skus, a product's
numbers and ledger, the reconciliation report, and told-equals-held."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import asyncpg

from inventory_graphql.database import create_migrated_database
from inventory_graphql.inventory.reconcile import Report, reconcile


async def create_database(server_url: str) -> str:
    """A fresh, migrated database on the server; its URL."""
    return await create_migrated_database(server_url, f"inventory_test_{secrets.token_hex(4)}")


def new_sku(prefix: str = "T") -> str:
    """A sku no other test uses (tests share the session's database)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def stock(db: asyncpg.Connection, sku: str) -> dict[str, int]:
    """quantity, reserved, available and version of one product ({} if there is none)."""
    row = await db.fetchrow(
        "SELECT quantity, reserved, quantity - reserved AS available, version "
        "FROM product WHERE sku = $1",
        sku,
    )
    return dict(row) if row else {}


async def ledger(db: asyncpg.Connection, sku: str) -> list[tuple[str, int, int]]:
    """The product's stock movements in order: (kind, quantity delta, reserved delta)."""
    rows = await db.fetch(
        "SELECT m.kind::text, m.quantity_delta, m.reserved_delta FROM stock_movement m "
        "JOIN product p ON p.id = m.product_id WHERE p.sku = $1 ORDER BY m.id",
        sku,
    )
    return [tuple(r) for r in rows]


async def told_equals_held(db: asyncpg.Connection, skus: list[str], outcomes: list[Any]) -> None:
    """Every hold on these products is one a caller was told about, with the lines it was
    told, and every hold a caller was told about exists."""
    rows = await db.fetch(
        """
        SELECT r.id::text, r.status::text,
               array_agg(p.sku || ':' || l.quantity ORDER BY p.sku) AS lines
        FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id
        JOIN product p ON p.id = l.product_id
        WHERE r.id IN (SELECT reservation_id FROM reservation_line
                       WHERE product_id IN (SELECT id FROM product WHERE sku = any($1::text[])))
        GROUP BY r.id
        """,
        skus,
    )
    held = {row["id"]: row["lines"] for row in rows}
    told = {
        o.id: [f"{line.sku}:{line.quantity}" for line in o.lines]
        for o in outcomes
        if type(o).__name__ == "Reservation"
    }
    assert held == told, f"held but not told: {held.keys() - told.keys()}, told: {told}"


async def past_expiry(db: asyncpg.Connection, *hold_ids: str) -> None:
    """Move PENDING holds past their expiry, as if their time had run out: the service
    compares expires_at with now(), so this is what waiting would do, without the wait."""
    await db.execute(
        "UPDATE reservation SET created_at = now() - interval '1 hour', "
        "expires_at = now() - interval '1 second' WHERE id = any($1::uuid[])",
        list(hold_ids),
    )


async def check(db: asyncpg.Connection) -> Report:
    """The whole database reconciled (stock against holds against the ledger)."""
    return await reconcile(db, overdue_grace_seconds=5)
