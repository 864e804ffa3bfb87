"""Holds on stock: reserve, confirm, release, expire.

PostgreSQL does every check under its row locks; Python never reads a number and then
writes one computed from it. Products are locked in sku order everywhere, so carts that
overlap in any order cannot deadlock each other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence

import asyncpg

from inventory_graphql.database import Connection
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.errors import Busy
from inventory_graphql.inventory.models import (
    ANONYMOUS,
    BuyerRequired,
    Caller,
    ExtendOutcome,
    HoldLimitReached,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidInput,
    LineRequest,
    ProductNotFound,
    PurchaseLimitExceeded,
    Reservation,
    ReservationLine,
    ReservationNotFound,
    ReservationNotPending,
    ReservationStatus,
    ReserveOutcome,
    ResolveOutcome,
    TooManyPendingHolds,
)
from inventory_graphql.inventory.transactions import Rollback, in_transaction

# The id is chosen by the caller before anything is held, so whatever happens to the
# connection, the outcome can be read back by id (see VOID_UNLESS_HELD).
# A concurrent caller with the same key waits here until the first one commits or rolls
# back, then either finds the key taken (replay) or takes it: one hold per key.
# Keys are per buyer (anonymous callers share one namespace): another buyer's key is
# another key, so it can neither replay nor reveal someone else's hold.
INSERT_RESERVATION = """
INSERT INTO reservation (id, idempotency_key, expires_at, buyer)
VALUES ($1, $2, now() + make_interval(secs => $3), $4)
ON CONFLICT (buyer, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id, created_at, expires_at
"""

# The design's statement, with the fairness rules (migration 006): the row is locked
# first, then the stock, the queue and the buyer's purchase limit are checked against
# what is committed under that lock, and the line is held or the numbers say why not.
HOLD_LINE = "SELECT * FROM hold_line($1, $2, $3)"

# The pending-hold cap per buyer: buyers are locked after every product (as everywhere),
# then counted in a later statement, which sees every hold committed under that lock.
LOCK_BUYER = "SELECT pg_advisory_xact_lock(hashtext('inventory.buyer'), hashtext($1))"
# Counted through the buyer's holds (a FILTER, not a WHERE), as grant_singles counts them:
# no plan may walk every pending hold instead.
PENDING_HOLDS = """
SELECT count(*) FILTER (WHERE status = 'PENDING') FROM reservation WHERE buyer = $1
"""

# A cart's lines as committed now, read without locks before any line is held: a cart
# that cannot fit (a hundred lines, the last one short) is refused for the price of one
# read instead of a hundred updates rolled back. The answer is true as of this read; a
# cart that passes is still decided line by line under the row locks below.
# While a waiting list waits on a product, nothing of it is available to a new reserve.
AVAILABLE_NOW = """
SELECT sku, CASE WHEN waiting > 0 THEN 0 ELSE quantity - reserved END AS available
FROM product WHERE sku = any($1::text[])
"""

INSERT_LINES = """
WITH line AS (
    -- The hold's lines, already reserved on their products above.
    INSERT INTO reservation_line (reservation_id, product_id, quantity)
    SELECT $1, product_id, quantity FROM unnest($2::bigint[], $3::int[]) AS l(product_id, quantity)
    RETURNING product_id, quantity
)
INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reservation_id,
                            feed_key, quantity_after, reserved_after, version_after)
-- Its ledger rows, one per line, in the same statement, with the numbers the lines' updates
-- (earlier statements) left.
SELECT l.product_id, 'RESERVE', 0, l.quantity, $1, greatest(pg_current_xact_id(), p.feed_key),
       p.quantity, p.reserved, p.version
FROM line l JOIN product p ON p.id = l.product_id
"""

# Settles "was this request held?" after a fault. Inserting a VOID row with the request's
# id waits on the primary key for any transaction still inserting that id; then it either
# conflicts (the hold committed: it is read back next, in a new snapshot) or takes the id
# for good, so a late commit of the same id fails instead of leaving a hold nobody knows.
VOID_UNLESS_HELD = """
INSERT INTO reservation (id, status, created_at, expires_at, resolved_at)
SELECT id, 'VOID', now(), now() + interval '1 second', now() FROM unnest($1::uuid[]) AS id
ON CONFLICT (id) DO NOTHING
"""

HELD = """
SELECT id, created_at, expires_at FROM reservation
WHERE id = any($1::uuid[]) AND status <> 'VOID'
"""

# A reservation with its lines, lines in sku order.
RESERVATION = """
SELECT r.id, r.status, r.created_at, r.expires_at, r.resolved_at, r.buyer,
       array_agg(p.sku ORDER BY p.sku) AS skus,
       array_agg(l.quantity ORDER BY p.sku) AS quantities,
       array_agg(l.confirmed ORDER BY p.sku) AS confirmed,
       array_agg(l.released ORDER BY p.sku) AS released
FROM reservation r
JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
WHERE r.id = $1
GROUP BY r.id
"""

KEYED = "SELECT id FROM reservation WHERE idempotency_key = $1 AND buyer IS NOT DISTINCT FROM $2"

# Each transition is guarded by `status = 'PENDING'`, so it happens at most once however
# many callers race; a hold found past its expiry is expired instead, whoever finds it.
# Only the hold's own buyer (or an admin, $3) can resolve it.
RESOLVE = """
UPDATE reservation
SET status = CASE WHEN expires_at > now() THEN $2::reservation_status
                  ELSE 'EXPIRED' END,
    resolved_at = now()
WHERE id = $1 AND status = 'PENDING' AND ($3 OR buyer IS NOT DISTINCT FROM $4)
RETURNING status
"""

# The sweeper never holds one product row while waiting for another. It takes the due
# holds (skipping those being resolved), then whichever of their products are free right
# now, and expires the holds it has every product of. A product that was busy gets a
# transaction of its own that waits for that row alone, at most SWEEP_LOCK_WAIT; a row
# locked past that (a long transaction anywhere) is passed over with all its holds, so
# the other products' holds still expire on time.
SWEEP_LOCK_WAIT = "SET LOCAL lock_timeout = '500ms'"

DUE = """
SELECT r.id FROM reservation r
WHERE r.status = 'PENDING' AND r.expires_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM reservation_line l
      WHERE l.reservation_id = r.id AND l.product_id = any($2::bigint[]))
  AND ($3::bigint IS NULL OR EXISTS (
      SELECT 1 FROM reservation_line l WHERE l.reservation_id = r.id AND l.product_id = $3))
ORDER BY r.expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

LOCK_PRODUCT = "SELECT id FROM product WHERE id = $1 FOR UPDATE"

LOCK_FREE_PRODUCTS_OF = """
SELECT id FROM product
WHERE id IN (SELECT product_id FROM reservation_line WHERE reservation_id = any($1::uuid[]))
ORDER BY sku
FOR UPDATE SKIP LOCKED
"""

# The lines of these holds, for telling which holds have all their products locked.
LINES_OF = """
SELECT reservation_id, product_id FROM reservation_line WHERE reservation_id = any($1::uuid[])
"""

EXPIRE = """
UPDATE reservation SET status = 'EXPIRED', resolved_at = now()
WHERE id = any($1::uuid[]) AND status = 'PENDING'
"""

# Holds whose clients will never learn of them (gone, or told an error), given back.
RELEASE_PENDING = """
UPDATE reservation SET status = 'RELEASED', resolved_at = now()
WHERE id = any($1::uuid[]) AND status = 'PENDING'
RETURNING id
"""

LOCK_PRODUCTS_OF = """
SELECT p.id FROM product p
WHERE p.id IN (SELECT product_id FROM reservation_line WHERE reservation_id = any($1::uuid[]))
ORDER BY p.sku
FOR UPDATE
"""

# Give back (or, on confirm, also ship) the units still held by resolved reservations:
# one ledger row per line that still holds any, one update per product.
SETTLE = """
WITH line AS (
    -- The lines of the holds that have just left PENDING (their products are locked),
    -- with what they still hold after any partial release.
    SELECT reservation_id, product_id, quantity - confirmed - released AS quantity
    FROM reservation_line
    WHERE reservation_id = any($1::uuid[]) AND quantity - confirmed - released > 0
), closed AS (
    -- The lines record where their units went.
    UPDATE reservation_line l
    SET confirmed = l.confirmed + CASE WHEN $3 THEN line.quantity ELSE 0 END,
        released = l.released + CASE WHEN $3 THEN 0 ELSE line.quantity END
    FROM line
    WHERE l.reservation_id = line.reservation_id AND l.product_id = line.product_id
), per_product AS (
    -- One update per product, however many of these holds it is in.
    SELECT product_id, sum(quantity)::int AS quantity FROM line GROUP BY product_id
), settled AS (
    UPDATE product p
    SET quantity = p.quantity - CASE WHEN $3 THEN pp.quantity ELSE 0 END,
        reserved = p.reserved - pp.quantity,
        updated_at = now()
    FROM per_product pp
    WHERE p.id = pp.product_id
    RETURNING p.id, p.quantity, p.reserved, p.version,
              greatest(pg_current_xact_id(), p.feed_key) AS feed_key, pp.quantity AS units
), movement AS (
    SELECT l.product_id, l.reservation_id, CASE WHEN $3 THEN -l.quantity ELSE 0 END AS delta,
           l.quantity
    FROM line l
)
-- One closing ledger row per line; a confirm also takes the units off the stock. An admin's
-- confirm or release names the admin ($4; NULL for everyone else). Each row's numbers are
-- the product's after the update, less the rows after it (ids follow the ORDER BY).
INSERT INTO stock_movement
    (product_id, kind, quantity_delta, reserved_delta, reservation_id, actor,
     feed_key, quantity_after, reserved_after, version_after)
SELECT m.product_id, $2::movement_kind, m.delta, -m.quantity, m.reservation_id, $4::text,
       s.feed_key,
       s.quantity - CASE WHEN $3 THEN -s.units ELSE 0 END + sum(m.delta) OVER upto,
       s.reserved + s.units - sum(m.quantity) OVER upto,
       s.version
FROM movement m JOIN settled s ON s.id = m.product_id
WINDOW upto AS (PARTITION BY m.product_id ORDER BY m.reservation_id)
ORDER BY m.product_id, m.reservation_id
"""

_MOVEMENT_OF = {
    ReservationStatus.CONFIRMED: "CONFIRM",
    ReservationStatus.RELEASED: "RELEASE",
    ReservationStatus.EXPIRED: "EXPIRE",
}


async def settle(
    conn: Connection,
    ids: Sequence[uuid.UUID],
    status: ReservationStatus,
    actor: str | None = None,
) -> None:
    """Apply the stock side of holds that have just left PENDING for `status` (`actor`:
    the admin who ended them, if one did)."""
    await conn.execute(LOCK_PRODUCTS_OF, ids)
    await conn.execute(
        SETTLE, ids, _MOVEMENT_OF[status], status is ReservationStatus.CONFIRMED, actor
    )


# Hold control (extend, partial confirm and release) first locks the hold's row: every
# change to a hold's lines or expiry happens under it, so callers racing on one hold take
# turns, and each sees what the one before it left. The sweeper skips locked holds.
LOCK_HOLD = """
SELECT status::text AS status, buyer, expires_at > now() AS live,
       created_at + make_interval(secs => $2) AS max_expires_at,
       now() + make_interval(secs => $3) <= created_at + make_interval(secs => $2) AS within_cap
FROM reservation WHERE id = $1
FOR UPDATE
"""

EXTEND = """
UPDATE reservation SET expires_at = greatest(expires_at, now() + make_interval(secs => $2))
WHERE id = $1
"""

HELD_LINES = """
SELECT p.sku, l.quantity - l.confirmed - l.released AS held
FROM reservation_line l JOIN product p ON p.id = l.product_id
WHERE l.reservation_id = $1
"""

# Part of a hold leaves it: shipped (confirm) or given back (release). One ledger row per
# line named, one update per product. The line's CHECK refuses more than it holds.
PART = """
WITH part AS (
    SELECT p.id AS product_id, w.quantity
    FROM unnest($2::text[], $3::int[]) AS w(sku, quantity) JOIN product p ON p.sku = w.sku
), line AS (
    UPDATE reservation_line l
    SET confirmed = l.confirmed + CASE WHEN $4 THEN part.quantity ELSE 0 END,
        released = l.released + CASE WHEN $4 THEN 0 ELSE part.quantity END
    FROM part
    WHERE l.reservation_id = $1 AND l.product_id = part.product_id
    RETURNING l.product_id, part.quantity
), moved AS (
    UPDATE product p
    SET quantity = p.quantity - CASE WHEN $4 THEN line.quantity ELSE 0 END,
        reserved = p.reserved - line.quantity,
        updated_at = now()
    FROM line
    WHERE p.id = line.product_id
    RETURNING p.id, p.quantity, p.reserved, p.version,
              greatest(pg_current_xact_id(), p.feed_key) AS feed_key, line.quantity AS units
)
-- One ledger row per line (a hold has one line per product), with the numbers after it.
INSERT INTO stock_movement
    (product_id, kind, quantity_delta, reserved_delta, reservation_id, actor,
     feed_key, quantity_after, reserved_after, version_after)
SELECT id, $5::movement_kind, CASE WHEN $4 THEN -units ELSE 0 END, -units, $1, $6::text,
       feed_key, quantity, reserved, version
FROM moved
"""

END = """
UPDATE reservation SET status = $2::reservation_status, resolved_at = now()
WHERE id = $1 AND status = 'PENDING'
"""


Refusal = (
    ProductNotFound
    | InsufficientStock
    | PurchaseLimitExceeded
    | BuyerRequired
    | TooManyPendingHolds
)


async def hold_lines(
    conn: Connection,
    request_id: uuid.UUID,
    lines: Sequence[LineRequest],
    ttl_seconds: float,
    idempotency_key: str | None = None,
    *,
    buyer: str | None = None,
    max_pending: int | None = None,
) -> Reservation | Refusal | None:
    """Hold every line for `buyer` in the caller's transaction, locking products in sku
    order (then the buyer, when `max_pending` caps its pending holds).

    Returns the hold; or why a line does not fit, true under that line's row lock (the
    caller must then roll back what was held); or None, having changed nothing, when the
    idempotency key is already taken. Raises Busy when a row stays locked too long.
    """
    created = await conn.fetchrow(
        INSERT_RESERVATION, request_id, idempotency_key, float(ttl_seconds), buyer
    )
    if created is None:
        return None
    in_lock_order = sorted(lines, key=lambda line: line.sku)
    if len(lines) > 1 and (refusal := await _cannot_fit(conn, in_lock_order)):
        return refusal
    product_ids = []
    for line in in_lock_order:
        try:
            held = await conn.fetchrow(HOLD_LINE, line.sku, line.quantity, buyer)
        except asyncpg.exceptions.LockNotAvailableError as error:
            raise Busy(f"product {line.sku} is locked", (line.sku,)) from error
        if held is None:
            return ProductNotFound(line.sku)
        if not held["held"]:
            refusal = refused(
                line, buyer, held["available"], held["purchase_limit"], held["held_by_buyer"]
            )
            assert refusal is not None, "hold_line refuses only what does not fit"
            return refusal
        product_ids.append(held["product_id"])
    if max_pending is not None and buyer is not None:
        await conn.execute(LOCK_BUYER, buyer)
        if await conn.fetchval(PENDING_HOLDS, buyer) > max_pending:  # this one included
            return TooManyPendingHolds(max_pending)
    await conn.execute(
        INSERT_LINES, created["id"], product_ids, [line.quantity for line in in_lock_order]
    )
    return pending(created["id"], in_lock_order, created)


async def _cannot_fit(conn: Connection, lines: Sequence[LineRequest]) -> Refusal | None:
    """The first line (in sku order) that does not fit as the stock stands now, if any."""
    return first_short(lines, available_now(await conn.fetch(AVAILABLE_NOW, skus_of(lines))))


def skus_of(lines: Sequence[LineRequest]) -> list[str]:
    return [line.sku for line in lines]


def available_now(rows: Sequence[asyncpg.Record]) -> dict[str, int]:
    """AVAILABLE_NOW's rows by sku."""
    return {row["sku"]: row["available"] for row in rows}


def first_short(lines: Sequence[LineRequest], available: Mapping[str, int]) -> Refusal | None:
    """The first of `lines` that does not fit `available` (read without locks), if any."""
    for line in lines:
        if refusal := _short(line, available.get(line.sku)):
            return refusal
    return None


def refused(
    line: LineRequest,
    buyer: str | None,
    available: int,
    purchase_limit: int | None,
    held_by_buyer: int | None,
) -> PurchaseLimitExceeded | BuyerRequired | InsufficientStock | None:
    """Why `line` was not held, from the numbers under its product's row lock: the
    buyer's limit first (the buyer's own cap), then the stock (0 while a queue waits)."""
    if purchase_limit is not None:
        if buyer is None:
            return BuyerRequired(line.sku)
        assert held_by_buyer is not None, "a buyer's tally is read for a limited product"
        if held_by_buyer + line.quantity > purchase_limit:
            return PurchaseLimitExceeded(line.sku, purchase_limit, held_by_buyer)
    if available < line.quantity:
        return InsufficientStock(line.sku, line.quantity, available)
    return None


def _short(line: LineRequest, available: int | None) -> Refusal | None:
    """Why `line` does not fit what is available (None: there is no such product)."""
    if available is None:
        return ProductNotFound(line.sku)
    if available < line.quantity:
        return InsufficientStock(line.sku, line.quantity, available)
    return None


def pending(
    request_id: uuid.UUID, lines: Sequence[LineRequest], row: asyncpg.Record
) -> Reservation:
    """The hold a request got, from its reservation row (created_at, expires_at)."""
    return Reservation(
        id=str(request_id),
        status=ReservationStatus.PENDING,
        lines=tuple(
            ReservationLine(line.sku, line.quantity)
            for line in sorted(lines, key=lambda line: line.sku)
        ),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        resolved_at=None,
    )


def _reservation_from_row(row: asyncpg.Record) -> Reservation:
    return Reservation(
        id=str(row["id"]),
        status=ReservationStatus(row["status"]),
        lines=tuple(
            ReservationLine(sku, quantity, confirmed, released)
            for sku, quantity, confirmed, released in zip(
                row["skus"], row["quantities"], row["confirmed"], row["released"], strict=True
            )
        ),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        resolved_at=row["resolved_at"],
    )


def _same_lines(reservation: Reservation, lines: Sequence[LineRequest]) -> bool:
    held = sorted((line.sku, line.quantity) for line in reservation.lines)
    return held == sorted((line.sku, line.quantity) for line in lines)


class Reservations:
    def __init__(
        self, pool: asyncpg.Pool, default_ttl_seconds: int, max_pending: int | None = None
    ) -> None:
        self._pool = pool
        self.default_ttl = default_ttl_seconds
        self.max_pending = max_pending  # PENDING holds per buyer; None: no cap

    async def get(self, reservation_id: str, caller: Caller = ANONYMOUS) -> Reservation | None:
        """The hold, if it is the caller's: another buyer's hold is as unknown as no hold."""
        rid = validation.parse_reservation_id(reservation_id)
        if rid is None:
            return None
        row = await self._pool.fetchrow(RESERVATION, rid)
        return _reservation_from_row(row) if row and caller.owns(row["buyer"]) else None

    async def reserve(
        self,
        request_id: uuid.UUID,
        lines: Sequence[LineRequest],
        ttl_seconds: int,
        idempotency_key: str | None = None,
        wanted: Callable[[], bool] = lambda: True,
        buyer: str | None = None,
    ) -> ReserveOutcome:
        """Hold every line or none of them, in a transaction of its own.

        Inputs are valid (the service checked them). After an error the outcome is read
        back by id: a hold that committed is returned, whatever the error said. `wanted`
        is asked once a connection is had: False (the caller left meanwhile) cancels.
        """

        async def hold(conn: Connection) -> ReserveOutcome:
            if not wanted():
                raise asyncio.CancelledError  # nothing done: the caller is gone
            held = await hold_lines(
                conn,
                request_id,
                lines,
                ttl_seconds,
                idempotency_key,
                buyer=buyer,
                max_pending=self.max_pending,
            )
            if held is None:
                raise Rollback(await self._replay(conn, idempotency_key, lines, buyer))
            if not isinstance(held, Reservation):
                raise Rollback(held)  # short or unknown: nothing stays held
            return held

        try:
            return await in_transaction(self._pool, hold)
        except Exception:
            found = await self.held([request_id])  # raises if the database cannot tell
            if request_id in found:
                return pending(request_id, lines, found[request_id])
            raise

    async def held(self, request_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
        """Of these request ids, those that hold stock (with created_at, expires_at).

        The others are voided: from now on they can never be granted.
        """
        async with self._pool.acquire() as conn:
            await conn.execute(VOID_UNLESS_HELD, request_ids)
            rows = await conn.fetch(HELD, request_ids)
        return {row["id"]: row for row in rows}

    async def give_back(self, request_ids: Sequence[uuid.UUID]) -> int:
        """Void these request ids, and release those that hold stock: their clients will
        never learn of them. Returns how many holds were released."""

        async def give_back(conn: Connection) -> int:
            await conn.execute(VOID_UNLESS_HELD, request_ids)
            released = [r["id"] for r in await conn.fetch(RELEASE_PENDING, request_ids)]
            if released:
                await settle(conn, released, ReservationStatus.RELEASED)
            return len(released)

        return await in_transaction(self._pool, give_back)

    async def _replay(
        self, conn: Connection, key: str | None, lines: Sequence[LineRequest], buyer: str | None
    ) -> Reservation | IdempotencyKeyReused:
        assert key is not None, "only a keyed insert can conflict"
        # Only on a replay: the key's id (the buyer's own), then the reservation.
        row = await conn.fetchrow(RESERVATION, await conn.fetchval(KEYED, key, buyer))
        assert row is not None, "the key conflicted, so its reservation exists"
        existing = _reservation_from_row(row)
        return existing if _same_lines(existing, lines) else IdempotencyKeyReused(key)

    async def confirm(self, reservation_id: str, caller: Caller = ANONYMOUS) -> ResolveOutcome:
        """Payment went through: the held units leave the stock."""
        return await self._resolve(reservation_id, ReservationStatus.CONFIRMED, caller)

    async def release(self, reservation_id: str, caller: Caller = ANONYMOUS) -> ResolveOutcome:
        """Payment failed or the shopper left: the held units return."""
        return await self._resolve(reservation_id, ReservationStatus.RELEASED, caller)

    async def _resolve(
        self, reservation_id: str, target: ReservationStatus, caller: Caller
    ) -> ResolveOutcome:
        rid = validation.parse_reservation_id(reservation_id)
        if rid is None:
            return ReservationNotFound(reservation_id)

        async def resolve(conn: Connection) -> None:
            status = await conn.fetchval(RESOLVE, rid, target.value, caller.admin, caller.buyer)
            if status is not None:
                await settle(conn, [rid], ReservationStatus(status), caller.actor)

        await in_transaction(self._pool, resolve)
        reservation = await self.get(reservation_id, caller)
        if reservation is None:
            return ReservationNotFound(reservation_id)
        if reservation.status is target or (
            target is ReservationStatus.RELEASED and reservation.status is ReservationStatus.EXPIRED
        ):
            return reservation  # done now, or by an earlier call: retrying is safe
        return ReservationNotPending(reservation.id, reservation.status)

    async def extend(
        self,
        reservation_id: str,
        ttl_seconds: int,
        max_hold_seconds: int,
        caller: Caller = ANONYMOUS,
    ) -> ExtendOutcome:
        """Hold until at least `ttl_seconds` from now, never past `max_hold_seconds` from
        the hold's creation (then HoldLimitReached, and nothing changes)."""
        rid = validation.parse_reservation_id(reservation_id)
        if rid is None:
            return ReservationNotFound(reservation_id)

        async def extend(conn: Connection) -> ExtendOutcome:
            hold = await conn.fetchrow(LOCK_HOLD, rid, float(max_hold_seconds), float(ttl_seconds))
            if ended := await self._ended(conn, rid, reservation_id, hold, caller):
                return ended
            assert hold is not None, "_ended answers for a missing hold"
            if not hold["within_cap"]:
                return HoldLimitReached(reservation_id, hold["max_expires_at"])
            await conn.execute(EXTEND, rid, float(ttl_seconds))
            return await self._read(conn, rid)

        return await in_transaction(self._pool, extend)

    async def confirm_part(
        self, reservation_id: str, lines: Sequence[LineRequest], caller: Caller = ANONYMOUS
    ) -> ResolveOutcome:
        """Ship these units of the hold and give back every other unit it holds."""
        return await self._part(reservation_id, lines, ReservationStatus.CONFIRMED, caller)

    async def release_part(
        self, reservation_id: str, lines: Sequence[LineRequest], caller: Caller = ANONYMOUS
    ) -> ResolveOutcome:
        """Give back these units; the hold ends (RELEASED) once it holds none."""
        return await self._part(reservation_id, lines, ReservationStatus.RELEASED, caller)

    async def _part(
        self,
        reservation_id: str,
        lines: Sequence[LineRequest],
        target: ReservationStatus,
        caller: Caller,
    ) -> ResolveOutcome:
        rid = validation.parse_reservation_id(reservation_id)
        if rid is None:
            return ReservationNotFound(reservation_id)
        confirming = target is ReservationStatus.CONFIRMED

        async def part(conn: Connection) -> ResolveOutcome:
            hold = await conn.fetchrow(LOCK_HOLD, rid, 0.0, 0.0)
            if ended := await self._ended(conn, rid, reservation_id, hold, caller):
                if isinstance(ended, ReservationNotPending):
                    return await self._repeated(conn, rid, lines, target, ended)
                return ended
            held = {r["sku"]: r["held"] for r in await conn.fetch(HELD_LINES, rid)}
            for i, line in enumerate(lines):
                if line.sku not in held:
                    return InvalidInput(f"lines[{i}].sku", f"{line.sku} is not in this hold")
                if line.quantity > held[line.sku]:
                    return InvalidInput(
                        f"lines[{i}].quantity", f"{held[line.sku]} of {line.sku} held"
                    )
            await conn.execute(LOCK_PRODUCTS_OF, [rid])
            await conn.execute(
                PART,
                rid,
                [line.sku for line in lines],
                [line.quantity for line in lines],
                confirming,
                "CONFIRM" if confirming else "RELEASE",
                caller.actor,
            )
            if confirming:
                # The rest of the hold goes back in the same transaction.
                await conn.execute(END, rid, ReservationStatus.CONFIRMED.value)
                await settle(conn, [rid], ReservationStatus.RELEASED, caller.actor)
            elif sum(held.values()) == sum(line.quantity for line in lines):
                await conn.execute(END, rid, ReservationStatus.RELEASED.value)
            return await self._read(conn, rid)

        return await in_transaction(self._pool, part)

    async def _ended(
        self,
        conn: Connection,
        rid: uuid.UUID,
        reservation_id: str,
        hold: asyncpg.Record | None,
        caller: Caller,
    ) -> ReservationNotFound | ReservationNotPending | None:
        """Why a locked hold cannot change, if it cannot (another buyer's is unknown). A
        hold found past its expiry is expired here, by whoever finds it (as the sweeper
        would)."""
        if hold is None or hold["status"] == "VOID" or not caller.owns(hold["buyer"]):
            return ReservationNotFound(reservation_id)
        if hold["status"] != ReservationStatus.PENDING.value:
            return ReservationNotPending(reservation_id, ReservationStatus(hold["status"]))
        if not hold["live"]:
            await conn.execute(EXPIRE, [rid])
            await settle(conn, [rid], ReservationStatus.EXPIRED)
            return ReservationNotPending(reservation_id, ReservationStatus.EXPIRED)
        return None

    async def _repeated(
        self,
        conn: Connection,
        rid: uuid.UUID,
        lines: Sequence[LineRequest],
        target: ReservationStatus,
        ended: ReservationNotPending,
    ) -> ResolveOutcome:
        """A partial confirm or release of an ended hold: a retry of the call that ended it
        answers the hold as it is (as full ones do); anything else, ReservationNotPending."""
        hold = await self._read(conn, rid)
        if target is ReservationStatus.RELEASED and ended.status in (
            ReservationStatus.RELEASED,
            ReservationStatus.EXPIRED,
        ):
            return hold
        confirmed = {line.sku: line.confirmed for line in hold.lines}
        asked = {line.sku: line.quantity for line in lines}
        if (
            ended.status is target
            and set(asked) <= set(confirmed)
            and all(confirmed[sku] == asked.get(sku, 0) for sku in confirmed)
        ):
            return hold
        return ended

    async def _read(self, conn: Connection, rid: uuid.UUID) -> Reservation:
        row = await conn.fetchrow(RESERVATION, rid)
        assert row is not None, "a locked hold with lines exists"
        return _reservation_from_row(row)

    async def expire_due(
        self, limit: int, skip_products: Sequence[int] = (), wait_for: int | None = None
    ) -> tuple[int, list[int]]:
        """Expire up to `limit` holds past their time, none on `skip_products`.

        Without `wait_for`, waits for no product row. Returns how many were expired, and
        the products that were busy (locked by someone else) at that moment. With
        `wait_for`, expires holds on that product, waiting for its row alone; raises
        asyncpg's LockNotAvailableError if it stays locked.
        """

        async def expire(conn: Connection) -> tuple[int, list[int]]:
            await conn.execute(SWEEP_LOCK_WAIT)
            due = [r["id"] for r in await conn.fetch(DUE, limit, list(skip_products), wait_for)]
            if not due:
                return 0, []
            if wait_for is not None:
                await conn.execute(LOCK_PRODUCT, wait_for)
            free = {r["id"] for r in await conn.fetch(LOCK_FREE_PRODUCTS_OF, due)}
            if wait_for is not None:
                free.add(wait_for)
            busy: set[int] = set()
            blocked: set[uuid.UUID] = set()
            for line in await conn.fetch(LINES_OF, due):
                if line["product_id"] not in free:
                    busy.add(line["product_id"])
                    blocked.add(line["reservation_id"])
            ready = [hold for hold in due if hold not in blocked]
            if ready:
                await conn.execute(EXPIRE, ready)
                await settle(conn, ready, ReservationStatus.EXPIRED)
            return len(ready), sorted(busy)

        return await in_transaction(self._pool, expire)
