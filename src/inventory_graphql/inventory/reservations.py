"""Holds on stock: reserve, confirm, release, expire.

PostgreSQL does every check under its row locks; Python never reads a number and then
writes one computed from it. Products are locked in sku order everywhere, so carts that
overlap in any order cannot deadlock each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from inventory_graphql.inventory import validation
from inventory_graphql.inventory.models import (
    IdempotencyKeyReused,
    InsufficientStock,
    LineRequest,
    ProductNotFound,
    Reservation,
    ReservationLine,
    ReservationNotFound,
    ReservationNotPending,
    ReservationStatus,
    ReserveOutcome,
    ResolveOutcome,
)
from inventory_graphql.inventory.transactions import Rollback, in_transaction

# A concurrent caller with the same key waits here until the first one commits or rolls
# back, then either finds the key taken (replay) or takes it: one hold per key.
INSERT_RESERVATION = """
INSERT INTO reservation (idempotency_key, expires_at)
VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id, created_at, expires_at
"""

# The design's statement: the stock check is the WHERE clause, under the row lock.
RESERVE_LINE = """
UPDATE product SET reserved = reserved + $1, updated_at = now()
WHERE sku = $2 AND (quantity - reserved) >= $1
RETURNING id
"""

INSERT_LINES = """
WITH line AS (
    INSERT INTO reservation_line (reservation_id, product_id, quantity)
    SELECT $1, product_id, quantity FROM unnest($2::bigint[], $3::int[]) AS l(product_id, quantity)
    RETURNING product_id, quantity
)
INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reservation_id)
SELECT product_id, 'RESERVE', 0, quantity, $1 FROM line
"""

AVAILABLE = "SELECT sku, quantity - reserved AS available FROM product WHERE sku = any($1::text[])"

SELECT_RESERVATION = """
SELECT r.id, r.status, r.created_at, r.expires_at, r.resolved_at,
       array_agg(p.sku ORDER BY p.sku) AS skus,
       array_agg(l.quantity ORDER BY p.sku) AS quantities
FROM reservation r
JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
WHERE {where}
GROUP BY r.id
"""

# Each transition is guarded by `status = 'PENDING'`, so it happens at most once however
# many callers race; a hold found past its expiry is expired instead, whoever finds it.
RESOLVE = """
UPDATE reservation
SET status = CASE WHEN expires_at > now() THEN $2::reservation_status
                  ELSE 'EXPIRED' END,
    resolved_at = now()
WHERE id = $1 AND status = 'PENDING'
RETURNING status
"""

EXPIRE_DUE = """
WITH due AS (
    SELECT id FROM reservation
    WHERE status = 'PENDING' AND expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE reservation r SET status = 'EXPIRED', resolved_at = now()
FROM due WHERE r.id = due.id
RETURNING r.id
"""

LOCK_PRODUCTS_OF = """
SELECT p.id FROM product p
WHERE p.id IN (SELECT product_id FROM reservation_line WHERE reservation_id = any($1::uuid[]))
ORDER BY p.sku
FOR UPDATE
"""

# Give back (or, on confirm, also ship) the held units of resolved reservations: one
# ledger row per line, one update per product.
SETTLE = """
WITH line AS (
    SELECT reservation_id, product_id, quantity FROM reservation_line
    WHERE reservation_id = any($1::uuid[])
), movement AS (
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reservation_id)
    SELECT product_id, $2::movement_kind, CASE WHEN $3 THEN -quantity ELSE 0 END, -quantity,
           reservation_id
    FROM line
), per_product AS (
    SELECT product_id, sum(quantity)::int AS quantity FROM line GROUP BY product_id
)
UPDATE product p
SET quantity = p.quantity - CASE WHEN $3 THEN pp.quantity ELSE 0 END,
    reserved = p.reserved - pp.quantity,
    updated_at = now()
FROM per_product pp
WHERE p.id = pp.product_id
"""

_MOVEMENT_OF = {
    ReservationStatus.CONFIRMED: "CONFIRM",
    ReservationStatus.RELEASED: "RELEASE",
    ReservationStatus.EXPIRED: "EXPIRE",
}


async def settle(
    conn: asyncpg.Connection, ids: Sequence[uuid.UUID], status: ReservationStatus
) -> None:
    """Apply the stock side of holds that have just left PENDING for `status`."""
    await conn.execute(LOCK_PRODUCTS_OF, ids)
    await conn.execute(SETTLE, ids, _MOVEMENT_OF[status], status is ReservationStatus.CONFIRMED)


class Shortage(Exception):
    """A line could not be held; the caller must roll back what was already held."""


async def hold_lines(
    conn: asyncpg.Connection,
    lines: Sequence[LineRequest],
    ttl_seconds: float,
    idempotency_key: str | None = None,
) -> Reservation | None:
    """Hold every line in the caller's transaction, locking products in sku order.

    Returns None, having changed nothing, when the idempotency key is already taken.
    Raises Shortage when a line is short or unknown.
    """
    created = await conn.fetchrow(INSERT_RESERVATION, idempotency_key, float(ttl_seconds))
    if created is None:
        return None
    in_lock_order = sorted(lines, key=lambda line: line.sku)
    product_ids = []
    for line in in_lock_order:
        product_id = await conn.fetchval(RESERVE_LINE, line.quantity, line.sku)
        if product_id is None:
            raise Shortage(line.sku)
        product_ids.append(product_id)
    await conn.execute(
        INSERT_LINES, created["id"], product_ids, [line.quantity for line in in_lock_order]
    )
    return Reservation(
        id=str(created["id"]),
        status=ReservationStatus.PENDING,
        lines=tuple(ReservationLine(line.sku, line.quantity) for line in in_lock_order),
        created_at=created["created_at"],
        expires_at=created["expires_at"],
        resolved_at=None,
    )


def _reservation_from_row(row: asyncpg.Record) -> Reservation:
    return Reservation(
        id=str(row["id"]),
        status=ReservationStatus(row["status"]),
        lines=tuple(
            ReservationLine(sku, quantity)
            for sku, quantity in zip(row["skus"], row["quantities"], strict=True)
        ),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        resolved_at=row["resolved_at"],
    )


def _same_lines(reservation: Reservation, lines: Sequence[LineRequest]) -> bool:
    held = sorted((line.sku, line.quantity) for line in reservation.lines)
    return held == sorted((line.sku, line.quantity) for line in lines)


def explain_shortage(
    lines: Sequence[LineRequest], available: dict[str, int]
) -> ProductNotFound | InsufficientStock | None:
    """The first line, in the caller's order, that `available` cannot cover."""
    for line in lines:
        if line.sku not in available:
            return ProductNotFound(line.sku)
        if available[line.sku] < line.quantity:
            return InsufficientStock(line.sku, line.quantity, available[line.sku])
    return None


class Reservations:
    def __init__(self, pool: asyncpg.Pool, default_ttl_seconds: int) -> None:
        self._pool = pool
        self.default_ttl = default_ttl_seconds

    async def get(self, reservation_id: str) -> Reservation | None:
        rid = validation.parse_reservation_id(reservation_id)
        if rid is None:
            return None
        row = await self._pool.fetchrow(SELECT_RESERVATION.format(where="r.id = $1"), rid)
        return _reservation_from_row(row) if row else None

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> ReserveOutcome:
        """Hold every line or none of them."""
        if invalid := validation.check_reserve(lines, ttl_seconds, idempotency_key):
            return invalid
        ttl = self.default_ttl if ttl_seconds is None else ttl_seconds

        async def hold(conn: asyncpg.Connection) -> ReserveOutcome | None:
            try:
                held = await hold_lines(conn, lines, ttl, idempotency_key)
            except Shortage:
                raise Rollback(None) from None  # short or unknown: explained after the rollback
            if held is None:
                raise Rollback(await self._replay(conn, idempotency_key, lines))
            return held

        while True:
            outcome = await in_transaction(self._pool, hold)
            if outcome is not None:
                return outcome
            shortage = await self._explain_shortage(lines)
            if shortage is not None:
                return shortage
            # Stock came back between our attempt and the explanation: try again.

    async def _replay(
        self, conn: asyncpg.Connection, key: str | None, lines: Sequence[LineRequest]
    ) -> Reservation | IdempotencyKeyReused:
        assert key is not None, "only a keyed insert can conflict"
        row = await conn.fetchrow(SELECT_RESERVATION.format(where="r.idempotency_key = $1"), key)
        existing = _reservation_from_row(row)
        return existing if _same_lines(existing, lines) else IdempotencyKeyReused(key)

    async def _explain_shortage(
        self, lines: Sequence[LineRequest]
    ) -> ProductNotFound | InsufficientStock | None:
        rows = await self._pool.fetch(AVAILABLE, [line.sku for line in lines])
        return explain_shortage(lines, {r["sku"]: r["available"] for r in rows})

    async def confirm(self, reservation_id: str) -> ResolveOutcome:
        """Payment went through: the held units leave the stock."""
        return await self._resolve(reservation_id, ReservationStatus.CONFIRMED)

    async def release(self, reservation_id: str) -> ResolveOutcome:
        """Payment failed or the shopper left: the held units return."""
        return await self._resolve(reservation_id, ReservationStatus.RELEASED)

    async def _resolve(self, reservation_id: str, target: ReservationStatus) -> ResolveOutcome:
        rid = validation.parse_reservation_id(reservation_id)
        if rid is None:
            return ReservationNotFound(reservation_id)

        async def resolve(conn: asyncpg.Connection) -> None:
            status = await conn.fetchval(RESOLVE, rid, target.value)
            if status is not None:
                await settle(conn, [rid], ReservationStatus(status))

        await in_transaction(self._pool, resolve)
        reservation = await self.get(reservation_id)
        if reservation is None:
            return ReservationNotFound(reservation_id)
        if reservation.status is target or (
            target is ReservationStatus.RELEASED and reservation.status is ReservationStatus.EXPIRED
        ):
            return reservation  # done now, or by an earlier call: retrying is safe
        return ReservationNotPending(reservation.id, reservation.status)

    async def expire_due(self, limit: int) -> int:
        """Expire up to `limit` holds past their time; return how many."""

        async def expire(conn: asyncpg.Connection) -> int:
            ids = [r["id"] for r in await conn.fetch(EXPIRE_DUE, limit)]
            if ids:
                await settle(conn, ids, ReservationStatus.EXPIRED)
            return len(ids)

        return await in_transaction(self._pool, expire)
