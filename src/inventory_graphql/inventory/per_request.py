"""Reservations one transaction each: keyed requests, and every request when coalescing is off."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from inventory_graphql.inventory.contention import Contention
from inventory_graphql.inventory.errors import Busy
from inventory_graphql.inventory.give_back import GiveBack
from inventory_graphql.inventory.models import LineRequest, ReserveOutcome
from inventory_graphql.inventory.reservations import Reservations


class PerRequest:
    def __init__(
        self,
        reservations: Reservations,
        give_back: GiveBack,
        contention: Contention,
        *,
        max_queued: int,
    ) -> None:
        self._reservations = reservations
        self._give_back = give_back
        self._contention = contention
        self._max_queued = max_queued
        self._in_flight = 0  # reserves waiting or running

    @property
    def queued(self) -> int:
        return self._in_flight

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ttl_seconds: int,
        idempotency_key: str | None = None,
        *,
        buyer: str | None = None,
    ) -> ReserveOutcome:
        if self._in_flight >= self._max_queued:
            raise Busy("too many reservations are waiting; retry shortly")
        skus = [line.sku for line in lines]
        request_id = uuid.uuid4()
        gone = False  # the caller left: a connection had after that is not used
        self._in_flight += 1
        try:
            async with self._contention.one_at_a_time(skus):
                # Shielded: a client leaving must not cancel a statement mid-flight (its
                # outcome would be unknown); once it ends, a hold nobody awaits goes back.
                work = asyncio.ensure_future(
                    self._reservations.reserve(
                        request_id,
                        lines,
                        ttl_seconds,
                        idempotency_key,
                        wanted=lambda: not gone,
                        buyer=buyer,
                    )
                )
                try:
                    outcome = await asyncio.shield(work)
                except Busy as busy:
                    self._contention.mark(busy.skus)
                    raise
                except asyncio.CancelledError:
                    gone = True
                    if idempotency_key is None:
                        work.add_done_callback(lambda _: self._abandoned(work, request_id))
                    raise
            self._contention.clear(skus)
            return outcome
        finally:
            self._in_flight -= 1

    def _abandoned(self, work: asyncio.Future[ReserveOutcome], request_id: uuid.UUID) -> None:
        if not work.cancelled():
            work.exception()  # retrieved: the caller is gone, the give-back settles it
        self._give_back.add([request_id])
