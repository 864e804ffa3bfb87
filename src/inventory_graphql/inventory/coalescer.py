"""Coalesced reservations: many shoppers, one transaction.

A hot product's row lock is held until commit, WAL flush included, so one reservation per
transaction tops out near 1 / commit latency, and every notifying commit takes a global
lock. Here requests queue in the process; while one batch is in the database the next
one fills, and a batch is one transaction: each product is locked once (in sku order, so
nothing deadlocks), single-line requests are granted by one set-based statement, and the
whole batch commits (and NOTIFYs) once. A batch of single-line requests only (a flash
sale's) is one self-committing statement: one round trip, and the row lock is never held
while this process's event loop is busy elsewhere. No timer: an idle service runs a
batch of one at once.

Each request still gets its own answer, all-or-nothing, FIFO within a product. The
database still makes every decision under its row locks; Python only routes answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

import asyncpg

from inventory_graphql.background import background
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.errors import is_database_unavailable
from inventory_graphql.inventory.models import (
    LineRequest,
    Reservation,
    ReservationLine,
    ReservationStatus,
    ReserveOutcome,
)
from inventory_graphql.inventory.reservations import (
    AVAILABLE,
    Reservations,
    Shortage,
    explain_shortage,
    hold_lines,
)
from inventory_graphql.inventory.transactions import in_one_statement, in_transaction

log = logging.getLogger(__name__)

Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]  # runs one statement, returns its rows

LOCK_SKUS = "SELECT id FROM product WHERE sku = any($1::text[]) ORDER BY sku FOR UPDATE"

# Grants single-line requests in FIFO order per product: a request is granted when it and
# every request before it for the same product fit in what is available. It locks the
# products itself (in sku order, as every writer does; FOR UPDATE returns each row's
# latest committed numbers, whatever the statement's snapshot saw, and the UPDATE applies
# to that same latest version), so it can be a transaction of its own: lock, grant, hold
# and commit in one round trip, the row lock held only inside PostgreSQL, never across
# the network and this process's event loop. Inside a batch transaction the products are
# already locked and locking them again costs nothing. Per request: whether it was held,
# and its product's availability after the statement.
GRANT_SINGLES = """
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::uuid[], $4::float8[]) WITH ORDINALITY
        AS r(sku, quantity, id, ttl, ord)
), locked AS (
    SELECT id, sku, quantity - reserved AS available
    FROM product WHERE sku = any($1::text[]) ORDER BY sku FOR UPDATE
), fifo AS (
    SELECT r.*, l.id AS product_id, l.available,
           sum(r.quantity) OVER (PARTITION BY l.id ORDER BY r.ord) AS wanted_so_far
    FROM request r JOIN locked l ON l.sku = r.sku
), granted AS (
    SELECT * FROM fifo WHERE wanted_so_far <= available
), per_product AS (
    SELECT product_id, sum(quantity)::int AS quantity FROM granted GROUP BY product_id
), held AS (
    UPDATE product p SET reserved = p.reserved + g.quantity, updated_at = now()
    FROM per_product g
    WHERE p.id = g.product_id
), hold AS (
    INSERT INTO reservation (id, expires_at)
    SELECT id, now() + make_interval(secs => ttl) FROM granted
    RETURNING id, created_at, expires_at
), line AS (
    INSERT INTO reservation_line (reservation_id, product_id, quantity)
    SELECT id, product_id, quantity FROM granted
), movement AS (
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reservation_id)
    SELECT product_id, 'RESERVE', 0, quantity, id FROM granted
)
SELECT f.ord, f.sku, f.available - coalesce(g.quantity, 0) AS available_after,
       h.created_at, h.expires_at
FROM fifo f
LEFT JOIN per_product g ON g.product_id = f.product_id
LEFT JOIN hold h ON h.id = f.id
"""


@dataclass(eq=False)
class _Request:
    lines: Sequence[LineRequest]
    ttl: int
    future: asyncio.Future[ReserveOutcome]
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def single(self) -> bool:
        return len(self.lines) == 1


class ReservationCoalescer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        reservations: Reservations,
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_batch = on_batch  # told each batch's size (metrics)
        self._reservations = reservations
        self._max_batch = max_batch
        self._queue: list[_Request] = []
        self._wake = asyncio.Event()
        self.batches = 0
        self.batched_requests = 0

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> ReserveOutcome:
        if invalid := validation.check_reserve(lines, ttl_seconds, idempotency_key):
            return invalid
        if idempotency_key is not None:
            # A keyed reserve may wait on another transaction's uncommitted key; inside a
            # batch that already holds product locks, that wait could deadlock.
            return await self._reservations.reserve(lines, ttl_seconds, idempotency_key)
        ttl = self._reservations.default_ttl if ttl_seconds is None else ttl_seconds
        request = _Request(tuple(lines), ttl, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._wake.set()
        return await request.future

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReservationCoalescer]:
        try:
            async with background(self._run(), "reservation-coalescer"):
                yield self
        finally:
            for request in self._queue:  # shutting down: nothing was held for these
                if not request.future.done():
                    request.future.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._answer(batch)

    async def _answer(self, batch: list[_Request]) -> None:
        self.batches += 1
        self.batched_requests += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            if all(request.single for request in batch):
                outcomes = await self._hold_singles_alone(batch)
            else:
                outcomes = await in_transaction(self._pool, lambda conn: self._hold(conn, batch))
        except Exception as error:
            if is_database_unavailable(error):
                for request in batch:  # nothing was held; each caller may retry
                    if not request.future.done():
                        request.future.set_exception(error)
                return
            # One request must not fail the others: answer each on its own.
            log.exception("batch of %d failed; answering its requests one by one", len(batch))
            await asyncio.gather(*(self._answer_alone(request) for request in batch))
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            if not request.future.done():
                request.future.set_result(outcome)

    async def _answer_alone(self, request: _Request) -> None:
        try:
            outcome = await self._reservations.reserve(request.lines, request.ttl)
        except Exception as error:
            if not request.future.done():
                request.future.set_exception(error)
        else:
            if not request.future.done():
                request.future.set_result(outcome)

    async def _hold(self, conn: asyncpg.Connection, batch: list[_Request]) -> list[ReserveOutcome]:
        skus = sorted({line.sku for request in batch for line in request.lines})
        await conn.execute(LOCK_SKUS, skus)
        held: dict[_Request, Reservation] = {}
        # FIFO: runs of single-line requests go through one statement, carts one by one.
        for single, run in groupby(batch, key=lambda request: request.single):
            if single:
                held.update((await self._hold_singles(list(run), conn.fetch))[0])
            else:
                for cart in run:
                    if reservation := await self._hold_cart(conn, cart):
                        held[cart] = reservation
        rows = await conn.fetch(AVAILABLE, skus)
        return _outcomes(batch, held, {r["sku"]: r["available"] for r in rows})

    async def _hold_singles(
        self, requests: list[_Request], fetch: Fetch
    ) -> tuple[dict[_Request, Reservation], dict[str, int]]:
        """Grant single-line requests; the held ones, and availability per sku after."""
        held: dict[_Request, Reservation] = {}
        available: dict[str, int] = {}
        while requests:
            rows = await fetch(
                GRANT_SINGLES,
                [r.lines[0].sku for r in requests],
                [r.lines[0].quantity for r in requests],
                [r.id for r in requests],
                [float(r.ttl) for r in requests],
            )
            for row in rows:
                request = requests[row["ord"] - 1]
                available[row["sku"]] = row["available_after"]
                if row["created_at"] is not None:
                    held[request] = _reservation(request, row)
            # A request refused only because a larger one before it did not fit may still
            # fit: another pass, in order, for those that fit what is left on their own.
            # Each pass grants at least the first of them per product, so this ends.
            requests = [
                r
                for r in requests
                if r not in held and r.lines[0].quantity <= available.get(r.lines[0].sku, 0)
            ]
        return held, available

    async def _hold_singles_alone(self, batch: list[_Request]) -> list[ReserveOutcome]:
        """A batch of single-line requests only: each pass a self-committing statement."""

        async def fetch(query: str, *args: object) -> list[asyncpg.Record]:
            return await in_one_statement(self._pool, lambda conn: conn.fetch(query, *args))

        held, available = await self._hold_singles(batch, fetch)
        return _outcomes(batch, held, available)

    async def _hold_cart(self, conn: asyncpg.Connection, cart: _Request) -> Reservation | None:
        try:
            async with conn.transaction():  # a savepoint: a short cart undoes only itself
                return await hold_lines(conn, cart.lines, cart.ttl)
        except Shortage:
            return None


def _reservation(request: _Request, row: asyncpg.Record) -> Reservation:
    line = request.lines[0]
    return Reservation(
        id=str(request.id),
        status=ReservationStatus.PENDING,
        lines=(ReservationLine(line.sku, line.quantity),),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        resolved_at=None,
    )


def _outcomes(
    batch: list[_Request], held: dict[_Request, Reservation], available: dict[str, int]
) -> list[ReserveOutcome]:
    """Each request's answer: its hold, or the first of its lines that did not fit."""
    outcomes: list[ReserveOutcome] = []
    for request in batch:
        outcome = held.get(request) or explain_shortage(request.lines, available)
        assert outcome is not None, "a refused request always has a short line"
        outcomes.append(outcome)
    return outcomes
