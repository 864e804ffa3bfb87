"""The service as the layers above see it: every use case, one object per app lifespan.

The API, the hub and the health and metrics endpoints use only this class; its parts
(catalog, reservations, coalescer, sweeper) are private to the inventory package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from inventory_graphql.config import Settings
from inventory_graphql.inventory import admin_writes, stock_events, validation
from inventory_graphql.inventory.admin_writes import AdminWrites
from inventory_graphql.inventory.catalog import Catalog
from inventory_graphql.inventory.coalescer import ReservationCoalescer
from inventory_graphql.inventory.contention import Contention
from inventory_graphql.inventory.errors import Busy
from inventory_graphql.inventory.event_retention import Pruner
from inventory_graphql.inventory.give_back import GiveBack
from inventory_graphql.inventory.join_give_back import JoinGiveBack
from inventory_graphql.inventory.models import (
    ADMIN,
    ANONYMOUS,
    BulkAdjustOutcome,
    BuyerRequired,
    Caller,
    ExtendOutcome,
    InvalidInput,
    LineRequest,
    Product,
    ProductOutcome,
    Reservation,
    ReserveOutcome,
    ResolveOutcome,
    StockAdjustment,
    WaitlistEntry,
    WaitlistOutcome,
)
from inventory_graphql.inventory.per_request import PerRequest
from inventory_graphql.inventory.reservations import Reservations
from inventory_graphql.inventory.sweeper import Sweeper
from inventory_graphql.inventory.waitlist import QueueReads, Waitlist

SCHEMA_VERSION = "SELECT max(version) FROM schema_migration"


class Reserver(Protocol):
    """Holds valid, unkeyed requests: the coalescer, or one transaction per request."""

    @property
    def queued(self) -> int: ...

    async def reserve(
        self, lines: Sequence[LineRequest], ttl_seconds: int, *, buyer: str | None = None
    ) -> ReserveOutcome: ...


@dataclass(frozen=True)
class Stats:
    """What operators read at scrape time (`/metrics`)."""

    batches: int  # coalesced transactions
    queued: int  # reserves waiting for their answer
    contended: int  # products served one at a time after lock timeouts
    given_back: int  # holds released because their clients left or were told an error
    expired: int  # holds this process's sweeper expired
    pool_size: int
    pool_idle: int
    pool_max: int


class InventoryService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._catalog = Catalog(pool)
        self._admin_writes = AdminWrites(pool)
        self._join_give_back = JoinGiveBack(pool)
        self._waitlist = Waitlist(pool, self._join_give_back)
        self._queue_reads = QueueReads(pool)
        self._reservations = Reservations(
            pool, settings.hold_ttl_seconds, settings.max_pending_holds_per_buyer or None
        )
        self._give_back = GiveBack(self._reservations)
        self._contention = Contention()
        self._sweeper = Sweeper(
            self._reservations, settings.sweep_interval_seconds, settings.sweep_batch_size
        )
        self._pruner = Pruner(
            pool, settings.event_retention_hours, settings.event_prune_interval_seconds
        )
        self.feed_slots = stock_events.Slots(settings.max_feed_subscriptions)
        # Keyed reserves always take the per-request path: a keyed reserve may wait on
        # another transaction's uncommitted key, and inside a batch that already holds
        # product locks, that could deadlock.
        self._per_request = PerRequest(
            self._reservations,
            self._give_back,
            self._contention,
            max_queued=settings.max_queued_reservations,
        )
        self._coalescer: ReservationCoalescer | None = None
        self._unkeyed: Reserver = self._per_request
        if settings.coalesce_reservations:
            self._coalescer = ReservationCoalescer(
                pool,
                self._reservations,
                self._give_back,
                self._contention,
                max_batch=settings.max_batch,
                max_queued=settings.max_queued_reservations,
                max_lanes=max(1, settings.pool_size // 4),
                on_batch=on_batch,
            )
            self._unkeyed = self._coalescer

    @contextlib.asynccontextmanager
    async def running(self, *, sweep: bool = True) -> AsyncIterator[InventoryService]:
        """The background work: giving back abandoned holds and joins, coalescing, and
        (unless told otherwise, as tests that drive expiry themselves do) expiring due holds."""
        async with contextlib.AsyncExitStack() as running:
            await running.enter_async_context(self._give_back.running())
            await running.enter_async_context(self._join_give_back.running())
            if self._coalescer is not None:
                await running.enter_async_context(self._coalescer.running())
            if sweep:
                await running.enter_async_context(self._sweeper.running())
                await running.enter_async_context(self._admin_writes.running())
                await running.enter_async_context(self._pruner.running())
            yield self

    # Queries

    async def products(self, skus: Sequence[str] | None = None, first: int = 100) -> list[Product]:
        """These skus (or all products), in sku order, at most `first` of them."""
        return await self._catalog.products(skus, first)

    async def reservation(
        self, reservation_id: str, *, caller: Caller = ANONYMOUS
    ) -> Reservation | None:
        """The hold, if it is the caller's (another buyer's is answered as unknown)."""
        return await self._reservations.get(reservation_id, caller)

    # Holds

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
        *,
        caller: Caller = ANONYMOUS,
    ) -> ReserveOutcome:
        """Hold every line or none of them for the caller's buyer, coalesced with concurrent
        requests when enabled. Idempotency keys are the buyer's own.

        Answered within the request deadline (plus at most one lock_timeout for work
        already in the database), else Busy: nothing is then held for the request.
        Cancelling the call (the client left) abandons the request the same way. Keyed
        requests keep what they got: replaying the key returns it.
        """
        if invalid := validation.check_reserve(
            lines, ttl_seconds, idempotency_key, self._settings.max_units_per_line
        ):
            return invalid
        ttl = self._settings.hold_ttl_seconds if ttl_seconds is None else ttl_seconds
        # No hold lives past INVENTORY_MAX_HOLD_SECONDS from its creation, however it was
        # asked for: a longer ttl is held to the cap (as an extension past it would be).
        ttl = min(ttl, self._settings.max_hold_seconds)
        deadline = asyncio.timeout(self._settings.request_timeout_seconds)
        try:
            async with deadline:
                if idempotency_key is None:
                    return await self._unkeyed.reserve(lines, ttl, buyer=caller.buyer)
                return await self._per_request.reserve(
                    lines, ttl, idempotency_key, buyer=caller.buyer
                )
        except TimeoutError:
            if deadline.expired():
                raise Busy("no answer within the deadline; nothing is held") from None
            raise

    async def confirm(
        self,
        reservation_id: str,
        lines: Sequence[LineRequest] | None = None,
        *,
        caller: Caller = ANONYMOUS,
    ) -> ResolveOutcome:
        """Payment went through: the held units leave the stock. With `lines`, only
        those units do; every other held unit returns, in the same transaction."""
        if lines is None:
            return await self._reservations.confirm(reservation_id, caller)
        if invalid := validation.check_part(lines):
            return invalid
        return await self._reservations.confirm_part(reservation_id, lines, caller)

    async def release(
        self,
        reservation_id: str,
        lines: Sequence[LineRequest] | None = None,
        *,
        caller: Caller = ANONYMOUS,
    ) -> ResolveOutcome:
        """Payment failed or the shopper left: the held units return. With `lines`, only
        those units do; the hold stays PENDING while it holds any."""
        if lines is None:
            return await self._reservations.release(reservation_id, caller)
        if invalid := validation.check_part(lines):
            return invalid
        return await self._reservations.release_part(reservation_id, lines, caller)

    async def extend(
        self, reservation_id: str, ttl_seconds: int, *, caller: Caller = ANONYMOUS
    ) -> ExtendOutcome:
        """Hold at least `ttl_seconds` more, up to INVENTORY_MAX_HOLD_SECONDS from creation."""
        if invalid := validation.check_ttl(ttl_seconds):
            return invalid
        return await self._reservations.extend(
            reservation_id, ttl_seconds, self._settings.max_hold_seconds, caller
        )

    async def expire_due(self) -> int:
        """Expire every hold past its time now (the sweeper does this on its interval)."""
        return await self._sweeper.sweep_once()

    # The waiting list

    async def join_waitlist(self, sku: str, quantity: int, *, caller: Caller) -> WaitlistOutcome:
        """Wait for `quantity` units of a sold-out sku (one WAITING entry per buyer per
        sku; the purchase limit applies now). Offered a hold at once when nobody waits
        and the units are there."""
        max_units = self._settings.max_units_per_line
        if invalid := validation.check_waitlist_join(sku, quantity, max_units):
            return invalid
        if caller.buyer is None:  # waiting is per buyer (an admin has none either)
            return BuyerRequired(sku)
        return await self._waitlist.join(sku, quantity, caller.buyer)

    async def leave_waitlist(self, entry_id: str, *, caller: Caller) -> WaitlistOutcome:
        return await self._waitlist.leave(entry_id, caller)

    async def waitlist_entry(self, entry_id: str, *, caller: Caller) -> WaitlistEntry | None:
        return await self._waitlist.entry(entry_id, caller)

    async def waitlist_positions(self, sku: str, heard_at: float) -> dict[str, int]:
        """The positions of the sku's WAITING entries by id, read no earlier than
        `heard_at` (time.monotonic()); one read serves every concurrent watcher."""
        return await self._queue_reads.positions(sku, heard_at)

    # Stock (admin)

    async def create_product(self, sku: str, name: str, quantity: int) -> ProductOutcome:
        if invalid := validation.check_new_product(sku, name, quantity):
            return invalid
        return await self._catalog.create_product(sku, name, quantity)

    async def adjust_stock(
        self,
        sku: str,
        delta: int,
        reason: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        reference: str | None = None,
        caller: Caller = ADMIN,
    ) -> ProductOutcome:
        """Restock (positive delta) or write off (negative); never below what is held.
        With `expected_version`, only if the product is at that version; with a key,
        once per key of the caller (admin_writes.py)."""
        adjustment = StockAdjustment(sku, delta, reason, expected_version, reference)
        if invalid := admin_writes.check_adjustments([adjustment], idempotency_key, single=True):
            return invalid
        return await self._admin_writes.adjust(adjustment, idempotency_key, caller.actor)

    async def set_stock(
        self,
        sku: str,
        quantity: int,
        reason: str,
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        reference: str | None = None,
        caller: Caller = ADMIN,
    ) -> ProductOutcome:
        """A warehouse count: the quantity set (never below what is held), its delta in
        the ledger as a SET row."""
        args = (sku, quantity, reason, expected_version, reference, idempotency_key)
        if invalid := admin_writes.check_set(*args):
            return invalid
        return await self._admin_writes.set(*args, caller.actor)

    async def adjust_stocks(
        self,
        adjustments: Sequence[StockAdjustment],
        idempotency_key: str | None = None,
        *,
        caller: Caller = ADMIN,
    ) -> BulkAdjustOutcome:
        """Up to admin_writes.MAX_ADJUSTMENTS products, all or nothing."""
        if invalid := admin_writes.check_adjustments(adjustments, idempotency_key, single=False):
            return invalid
        return await self._admin_writes.adjust_many(adjustments, idempotency_key, caller.actor)

    async def set_purchase_limit(self, sku: str, per_buyer: int | None) -> ProductOutcome:
        """Units of `sku` one buyer may hold plus have bought; None removes the limit.
        Holds and purchases made before a lower limit stand."""
        if invalid := validation.check_purchase_limit(sku, per_buyer):
            return invalid
        return await self._catalog.set_purchase_limit(sku, per_buyer)

    async def set_low_stock_threshold(self, sku: str, threshold: int | None) -> ProductOutcome:
        """LOW_STOCK events when available drops below `threshold`; None removes it."""
        if invalid := validation.check_sku(sku):
            return invalid
        if threshold is not None and not 1 <= threshold <= validation.MAX_STOCK:
            return InvalidInput(
                "threshold", f"must be 1 to {validation.MAX_STOCK:,}, or null for none"
            )
        return await self._catalog.set_low_stock_threshold(sku, threshold)

    # The stock event feed (admin)

    async def stock_events(
        self, after: stock_events.Cursor | None, first: int
    ) -> list[stock_events.StockEvent] | stock_events.Expired:
        """Up to `first` final events after `after` (None: the oldest kept), in feed
        order; Expired when retention pruned events after it."""
        async with self._pool.acquire() as conn:
            return await stock_events.read_after(conn, after, first)

    async def prune_events(self) -> int:
        """Prune the feed's events past their retention now (the pruner does this on its
        interval)."""
        return await self._pruner.prune_once()

    # Operations

    async def schema_version(self) -> int | None:
        """The latest migration applied to the database (raises if it cannot be asked)."""
        version: int | None = await self._pool.fetchval(SCHEMA_VERSION)
        return version

    def stats(self) -> Stats:
        coalescer = self._coalescer
        return Stats(
            batches=coalescer.batches if coalescer else 0,
            queued=self._per_request.queued + (coalescer.queued if coalescer else 0),
            contended=self._contention.count,
            given_back=self._give_back.released_total,
            expired=self._sweeper.expired_total,
            pool_size=self._pool.get_size(),
            pool_idle=self._pool.get_idle_size(),
            pool_max=self._pool.get_max_size(),
        )
