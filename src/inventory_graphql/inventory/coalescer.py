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

Told equals held. Every request has its id before anything is granted, so after any
error (a failed pass, a cancelled statement, a connection broken around a commit) each
undecided request's outcome is read back by id, which also voids the ids not held: a
request is answered with its hold, or retried (a bounded number of times, with a new id),
or answered with the error, and never granted twice. A request whose caller has gone
(deadline, disconnect) is dropped while queued, and its hold given back if it was granted
meanwhile. A product whose row someone else keeps locked gets a lane of its own, so the
others never wait behind it (see contention.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING

import asyncpg

from inventory_graphql import tracing
from inventory_graphql.background import background
from inventory_graphql.database import Connection
from inventory_graphql.inventory.contention import Contention
from inventory_graphql.inventory.errors import Busy, is_busy, is_database_unavailable
from inventory_graphql.inventory.give_back import GiveBack
from inventory_graphql.inventory.models import (
    LineRequest,
    ProductNotFound,
    Reservation,
    ReserveOutcome,
    TooManyPendingHolds,
)
from inventory_graphql.inventory.reservations import (
    AVAILABLE_NOW,
    Refusal,
    Reservations,
    available_now,
    first_short,
    hold_lines,
    pending,
    refused,
)
from inventory_graphql.inventory.transactions import in_one_statement, in_transaction

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

log = logging.getLogger(__name__)

Fetch = Callable[..., Awaitable[list[asyncpg.Record]]]  # runs one statement, returns its rows

LOCK_SKUS = "SELECT id FROM product WHERE sku = any($1::text[]) ORDER BY sku FOR UPDATE"

# Which of these products are locked right now (by anyone)? Never waits.
LOCKED_NOW = """
SELECT sku FROM product
WHERE sku = any($1::text[])
  AND id NOT IN (SELECT id FROM product WHERE sku = any($1::text[]) FOR UPDATE SKIP LOCKED)
"""

# A self-committing pass grants at least one request per product unless other processes
# take the stock in between; past this many, the rest wait for the next batch.
MAX_PASSES = 16
# Failures of the same request before it is answered with the error. Lock timeouts do
# not count (the request waits in its product's lane until its deadline).
MAX_FAILURES = 3

# Grants single-line requests in FIFO order per product (the SQL: migration 006, and
# 007's path for a drop's batch, where no buyer asks twice and no cap applies): a
# request is granted when nobody waits for its product, its buyer stays within the
# product's purchase limit and the pending-hold cap, and it and every earlier eligible
# request for its product fit in what is available. The function locks the products
# itself (in sku order, as every writer does) and then decides with a fresh snapshot, so
# it can be a transaction of its own: lock, grant, hold and commit in one round trip,
# the row lock held only inside PostgreSQL, never across the network and this process's
# event loop. Inside a batch transaction the products are already locked and locking
# them again costs nothing. Per request: its product's public availability after the
# statement, the hold's times if granted, and the buyer's numbers after it.
GRANT_SINGLES = "SELECT * FROM grant_singles($1, $2, $3, $4, $5, $6)"
BATCH_SPAN = "reservation batch"


@dataclass(eq=False)
class _Request:
    lines: tuple[LineRequest, ...]
    ttl: int
    future: asyncio.Future[ReserveOutcome]
    buyer: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    failures: int = 0
    alone: bool = False  # failed for a reason nobody understood: retried in a batch of one
    # The caller's span (tracing on): each batch that serves the request links to it.
    trace: SpanContext | None = None

    @property
    def single(self) -> bool:
        return len(self.lines) == 1

    @property
    def skus(self) -> list[str]:
        return [line.sku for line in self.lines]

    @property
    def gone(self) -> bool:
        """Answered, or its caller stopped waiting (deadline, disconnect)."""
        return self.future.done()

    def answer(self, outcome: ReserveOutcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


Decided = dict[_Request, ReserveOutcome]


class ReservationCoalescer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        reservations: Reservations,
        give_back: GiveBack,
        contention: Contention,
        *,
        max_batch: int,
        max_queued: int,
        max_lanes: int = 2,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._reservations = reservations
        self._give_back = give_back
        self._contention = contention
        self._on_batch = on_batch  # told each batch's size (metrics)
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queue: deque[_Request] = deque()
        self._lanes: dict[str, deque[_Request]] = {}  # contended sku -> its requests
        self._lane_slots = asyncio.Semaphore(max_lanes)  # lanes waiting on locks at once
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._waiting = 0
        self.batches = 0
        self.batched_requests = 0

    @property
    def queued(self) -> int:
        """Requests waiting for their answer: queued, in lanes, or in a batch."""
        return self._waiting

    def _answered(self, _: asyncio.Future[ReserveOutcome]) -> None:
        self._waiting -= 1

    async def reserve(
        self, lines: Sequence[LineRequest], ttl_seconds: int, *, buyer: str | None = None
    ) -> ReserveOutcome:
        """Hold every line or none for `buyer`, in a batch with concurrent requests. Inputs
        are valid.

        Raises Busy at once when too many requests are waiting. Cancelling the call
        abandons the request: dropped if still queued, its hold given back if granted.
        """
        if self.queued >= self._max_queued:
            raise Busy("too many reservations are waiting; retry shortly")
        request = _Request(
            tuple(lines), ttl_seconds, asyncio.get_running_loop().create_future(), buyer
        )
        request.trace = tracing.current_span()
        self._waiting += 1
        request.future.add_done_callback(self._answered)  # answered, failed or abandoned
        self._enqueue([request])
        return await request.future  # cancelling the caller cancels the future too

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReservationCoalescer]:
        try:
            async with background(self._run(), "reservation-coalescer"):
                yield self
        finally:
            for task in list(self._lane_tasks):
                task.cancel()
            await asyncio.gather(*self._lane_tasks, return_exceptions=True)
            for request in [*self._queue, *(r for lane in self._lanes.values() for r in lane)]:
                request.future.cancel()  # shutting down: nothing was held for these

    # Queues and lanes

    def _enqueue(self, requests: Iterable[_Request], *, front: bool = False) -> None:
        main: list[_Request] = []
        for request in requests:
            contended = self._contention.contended(request.skus)
            if contended:
                self._to_lane(contended[0], request, front=front)
            else:
                main.append(request)
        if front:
            self._queue.extendleft(reversed(main))
        else:
            self._queue.extend(main)
        if main:
            self._wake.set()

    def _to_lane(self, sku: str, request: _Request, *, front: bool) -> None:
        lane = self._lanes.get(sku)
        if lane is None:
            lane = self._lanes[sku] = deque()
            task = asyncio.create_task(self._run_lane(sku, lane), name=f"lane-{sku}")
            self._lane_tasks.add(task)
            task.add_done_callback(self._lane_tasks.discard)
        if front:
            lane.appendleft(request)
        else:
            lane.append(request)

    def _take(self, queue: deque[_Request], *, lane: bool) -> list[_Request]:
        """The next batch: live requests in FIFO order; a request that must go alone, alone."""
        batch: list[_Request] = []
        while queue and len(batch) < self._max_batch:
            request = queue[0]
            if request.gone:
                queue.popleft()  # its caller stopped waiting: never granted
                continue
            if not lane and (contended := self._contention.contended(request.skus)):
                queue.popleft()
                self._to_lane(contended[0], request, front=False)
                continue
            if request.alone and batch:
                break
            batch.append(queue.popleft())
            if request.alone:
                break
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._take(self._queue, lane=False):
                await self._answer_safely(batch)

    async def _run_lane(self, sku: str, lane: deque[_Request]) -> None:
        """Requests for a product someone else keeps locked: one batch at a time, each
        waiting at most lock_timeout, until one gets through or nobody is waiting."""
        try:
            async with self._lane_slots:
                while batch := self._take(lane, lane=True):
                    if await self._answer_safely(batch):
                        self._contention.clear([sku])
                        break
        finally:
            if self._lanes.get(sku) is lane:
                del self._lanes[sku]
            self._enqueue(lane, front=True)  # what is left goes back to the main queue

    # A batch

    async def _answer_safely(self, batch: list[_Request]) -> bool:
        try:
            return await self._answer(batch)
        except Exception as error:  # a bug here must not stop the coalescer
            log.exception("answering a batch of %d failed", len(batch))
            self._give_back.add(request.id for request in batch if not request.gone)
            for request in batch:
                request.fail(error)
            return True

    async def _answer(self, batch: list[_Request]) -> bool:
        """Decide and answer every request of the batch; False if a lock held it up."""
        # One span per batch, linked to the requests it serves (a batch has many parents);
        # its statements are its children.
        links = [request.trace for request in batch]
        with tracing.span(BATCH_SPAN, links, {"inventory.batch.size": len(batch)}):
            return await self._answer_batch(batch)

    async def _answer_batch(self, batch: list[_Request]) -> bool:
        self.batches += 1
        self.batched_requests += len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch))
        decided: Decided = {}
        try:
            rest = await self._refuse_impossible_carts(batch, decided)
            if all(request.single for request in rest):
                left = await self._grant_singles(rest, self._fetch_alone, decided, MAX_PASSES)
                self._enqueue(left, front=True)  # others kept taking the stock: next batch
            else:
                decided.update(
                    await in_transaction(self._pool, lambda conn: self._grant(conn, rest))
                )
        except Exception as error:
            await self._recover(batch, decided, error)
            return not is_busy(error)
        except asyncio.CancelledError:
            # Shutting down mid-batch: whatever of it committed, nobody will hear of.
            undecided = [request for request in batch if request not in decided]
            self._give_back.add(request.id for request in undecided)
            for request in undecided:
                request.future.cancel()
            raise
        finally:
            self._deliver(decided)
        return True

    async def _refuse_impossible_carts(
        self, batch: list[_Request], decided: Decided
    ) -> list[_Request]:
        """The batch less the carts that cannot fit the stock as it stands, which are
        refused into `decided` for one read (all the batch's carts at once, no locks).

        Otherwise such a cart locks all its rows and takes its whole batch off the
        single-line fast path: 8 clients looping on 100-line carts short on their last
        line cut shoppers to a quarter of their rate. Carts that pass are still decided
        line by line under the row locks.
        """
        carts = [request for request in batch if not request.single]
        if not carts:
            return batch
        skus = sorted({sku for cart in carts for sku in cart.skus})
        available = available_now(await self._fetch_alone(AVAILABLE_NOW, skus))
        for cart in carts:
            if refusal := first_short(sorted(cart.lines, key=lambda line: line.sku), available):
                decided[cart] = refusal
        return [request for request in batch if request not in decided]

    async def _fetch_alone(self, query: str, *args: object) -> list[asyncpg.Record]:
        """One self-committing statement."""
        return await in_one_statement(self._pool, lambda conn: conn.fetch(query, *args))

    async def _grant(self, conn: Connection, batch: list[_Request]) -> Decided:
        """A batch with carts, in the caller's transaction (committed after this returns)."""
        await conn.execute(LOCK_SKUS, sorted({sku for request in batch for sku in request.skus}))
        decided: Decided = {}
        # FIFO: runs of single-line requests go through one statement, carts one by one.
        for single, run in groupby(batch, key=lambda request: request.single):
            if single:  # under this transaction's locks every pass grants: no limit
                await self._grant_singles(list(run), conn.fetch, decided, None)
            else:
                for cart in run:
                    decided[cart] = await _hold_cart(conn, cart, self._reservations.max_pending)
        return decided

    async def _grant_singles(
        self, requests: list[_Request], fetch: Fetch, decided: Decided, max_passes: int | None
    ) -> list[_Request]:
        """Grant single-line requests, FIFO per product, into `decided`.

        A request refused only because a larger one before it did not fit may still fit:
        another pass, in order, for those that fit what was left on their own. Each
        refusal is explained by the numbers of the pass that refused it, so the answer
        is true whatever commits between passes. Returns the requests still undecided
        after `max_passes`.
        """
        max_pending = self._reservations.max_pending
        passes = 0
        while requests and passes != max_passes:
            passes += 1
            rows = await fetch(
                GRANT_SINGLES,
                [r.lines[0].sku for r in requests],
                [r.lines[0].quantity for r in requests],
                [r.id for r in requests],
                [float(r.ttl) for r in requests],
                [r.buyer for r in requests],
                max_pending,
            )
            refused_rows: dict[_Request, asyncpg.Record] = {}
            for row in rows:
                request = requests[row["ord"] - 1]
                if row["created_at"] is not None:
                    decided[request] = pending(request.id, request.lines, row)
                else:
                    refused_rows[request] = row
            again = []
            for request in requests:
                if request in decided:
                    continue
                if (refused_row := refused_rows.get(request)) is None:
                    decided[request] = ProductNotFound(request.lines[0].sku)
                elif refusal := _explained(request, refused_row, max_pending):
                    decided[request] = refusal
                else:
                    again.append(request)  # refused only behind an earlier request
            requests = again
        return requests

    # After a failure

    async def _recover(self, batch: list[_Request], decided: Decided, error: Exception) -> None:
        """Answer what committed; retry or fail the rest. Never re-run a request blindly."""
        undecided = [request for request in batch if request not in decided]
        if not undecided:
            return
        try:
            held = await self._reservations.held([request.id for request in undecided])
        except Exception as read_error:
            # The database cannot say what committed. Answer the error; whatever did
            # commit is given back as soon as the database answers again.
            log.warning("batch failed (%r) and could not be read back: %r", error, read_error)
            self._give_back.add(request.id for request in undecided)
            for request in undecided:
                request.fail(error)
            return
        retry = []
        for request in undecided:
            if request.id in held:
                decided[request] = pending(request.id, request.lines, held[request.id])
            else:
                request.id = uuid.uuid4()  # the old id is void now
                retry.append(request)
        if not retry:
            return
        if is_busy(error):
            locked = await self._locked_now(retry)
            self._contention.mark(locked)
            if locked:  # they wait in their product's lane, until their deadline
                self._enqueue(retry, front=True)
                return
        unexplained = not is_busy(error) and not is_database_unavailable(error)
        if unexplained:
            log.error("batch of %d failed; retrying its requests alone", len(batch), exc_info=error)
        again = []
        for request in retry:
            request.failures += 1
            # A failure nobody understood: once more in a batch of its own, then the error.
            if request.failures >= MAX_FAILURES or (unexplained and len(batch) == 1):
                request.fail(error)
            else:
                request.alone = unexplained
                again.append(request)
        self._enqueue(again, front=True)

    async def _locked_now(self, requests: list[_Request]) -> list[str]:
        skus = sorted({sku for request in requests for sku in request.skus})
        try:
            rows = await self._fetch_alone(LOCKED_NOW, skus)
        except Exception:
            return []
        return [row["sku"] for row in rows]

    def _deliver(self, decided: Decided) -> None:
        gone = []
        for request, outcome in decided.items():
            if request.gone and isinstance(outcome, Reservation):
                gone.append(request.id)  # granted after its caller left: give it back
            else:
                request.answer(outcome)
        if gone:
            self._give_back.add(gone)


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__()
        self.refusal = refusal


def _explained(
    request: _Request, row: asyncpg.Record, max_pending: int | None
) -> ReserveOutcome | None:
    """Why GRANT_SINGLES refused `request`, if its numbers after the pass explain it: in
    hold_lines' order, the buyer's limit, then the stock, then the pending-hold cap."""
    line = request.lines[0]
    if refusal := refused(
        line, request.buyer, row["available_after"], row["purchase_limit"], row["held_after"]
    ):
        return refusal
    pending_after = row["pending_after"]
    if max_pending is not None and pending_after is not None and pending_after >= max_pending:
        return TooManyPendingHolds(max_pending)
    return None


async def _hold_cart(conn: Connection, cart: _Request, max_pending: int | None) -> ReserveOutcome:
    """A cart, all or nothing, in a savepoint: a refused cart undoes only itself, and
    says why under the row lock of the line that did not fit."""
    try:
        async with conn.transaction():
            held = await hold_lines(
                conn, cart.id, cart.lines, cart.ttl, buyer=cart.buyer, max_pending=max_pending
            )
            assert held is not None, "no idempotency key, so no conflict"
            if not isinstance(held, Reservation):
                raise _Refused(held)
            return held
    except _Refused as refused:
        return refused.refusal
