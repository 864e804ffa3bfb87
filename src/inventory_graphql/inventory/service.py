"""The service as the layers above see it: one object built per app lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from inventory_graphql.config import Settings
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.catalog import Catalog
from inventory_graphql.inventory.coalescer import ReservationCoalescer
from inventory_graphql.inventory.contention import Contention
from inventory_graphql.inventory.errors import Busy
from inventory_graphql.inventory.give_back import GiveBack
from inventory_graphql.inventory.models import LineRequest, ReserveOutcome
from inventory_graphql.inventory.reservations import Reservations


@dataclass
class InventoryService:
    pool: asyncpg.Pool
    catalog: Catalog
    reservations: Reservations
    give_back: GiveBack
    contention: Contention
    request_timeout: float
    max_queued: int
    # None: every reserve is its own transaction. Its worker runs in the app's lifespan.
    coalescer: ReservationCoalescer | None = None
    _in_flight: int = field(default=0, init=False)  # per-request reserves waiting or running

    @classmethod
    def from_pool(
        cls,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        coalesce: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> InventoryService:
        reservations = Reservations(pool, settings.hold_ttl_seconds)
        give_back = GiveBack(reservations)
        contention = Contention()
        coalescer = (
            ReservationCoalescer(
                pool,
                reservations,
                give_back,
                contention,
                max_batch=settings.max_batch,
                max_queued=settings.max_queued_reservations,
                max_lanes=max(1, settings.pool_size // 4),
                on_batch=on_batch,
            )
            if coalesce
            else None
        )
        return cls(
            pool=pool,
            catalog=Catalog(pool),
            reservations=reservations,
            give_back=give_back,
            contention=contention,
            request_timeout=settings.request_timeout_seconds,
            max_queued=settings.max_queued_reservations,
            coalescer=coalescer,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[InventoryService]:
        """The service's background work: giving back abandoned holds, coalescing."""
        async with contextlib.AsyncExitStack() as running:
            await running.enter_async_context(self.give_back.running())
            if self.coalescer is not None:
                await running.enter_async_context(self.coalescer.running())
            yield self

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> ReserveOutcome:
        """Hold every line or none of them, coalesced with concurrent requests when enabled.

        Answered within the request deadline (plus at most one lock_timeout for work
        already in the database), else Busy: nothing is then held for the request.
        Cancelling the call (the client left) abandons the request the same way. Keyed
        requests keep what they got: replaying the key returns it.
        """
        if invalid := validation.check_reserve(lines, ttl_seconds, idempotency_key):
            return invalid
        ttl = self.reservations.default_ttl if ttl_seconds is None else ttl_seconds
        deadline = asyncio.timeout(self.request_timeout)
        try:
            async with deadline:
                if idempotency_key is None and self.coalescer is not None:
                    return await self.coalescer.reserve(lines, ttl)
                # A keyed reserve may wait on another transaction's uncommitted key;
                # inside a batch that already holds product locks, that could deadlock.
                return await self._reserve_alone(lines, ttl, idempotency_key)
        except TimeoutError:
            if deadline.expired():
                raise Busy("no answer within the deadline; nothing is held") from None
            raise

    async def _reserve_alone(
        self, lines: Sequence[LineRequest], ttl: int, idempotency_key: str | None
    ) -> ReserveOutcome:
        if self._in_flight >= self.max_queued:
            raise Busy("too many reservations are waiting; retry shortly")
        skus = [line.sku for line in lines]
        request_id = uuid.uuid4()
        gone = False  # the caller left: a connection had after that is not used
        self._in_flight += 1
        try:
            async with self.contention.one_at_a_time(skus):
                # Shielded: a client leaving must not cancel a statement mid-flight (its
                # outcome would be unknown); once it ends, a hold nobody awaits goes back.
                work = asyncio.ensure_future(
                    self.reservations.reserve(
                        request_id, lines, ttl, idempotency_key, wanted=lambda: not gone
                    )
                )
                try:
                    outcome = await asyncio.shield(work)
                except Busy as busy:
                    self.contention.mark(busy.skus)
                    raise
                except asyncio.CancelledError:
                    gone = True
                    if idempotency_key is None:
                        work.add_done_callback(lambda _: self._abandoned(work, request_id))
                    raise
            self.contention.clear(skus)
            return outcome
        finally:
            self._in_flight -= 1

    def _abandoned(self, work: asyncio.Future[ReserveOutcome], request_id: uuid.UUID) -> None:
        if not work.cancelled():
            work.exception()  # retrieved: the caller is gone, the give-back settles it
        self.give_back.add([request_id])
