"""Expires holds nobody resolved, in every server process.

Several processes sweep safely together: each batch takes the due holds with
`FOR UPDATE SKIP LOCKED`, so they split a backlog instead of queueing on it. A product
whose row is locked (a long transaction anywhere) never stalls the sweeper either: its
holds are passed over, the rest expire on time, and they are tried again next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

from inventory_graphql.background import background
from inventory_graphql.inventory.reservations import Reservations

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, reservations: Reservations, interval: float, batch_size: int) -> None:
        self._reservations = reservations
        self._interval = interval
        self._batch_size = batch_size
        self.expired_total = 0

    async def sweep_once(self) -> int:
        """Expire everything due now, one bounded batch (one short transaction) at a time."""
        swept = 0
        stuck: list[int] = []  # products whose rows someone keeps locked: passed over
        while True:
            count, busy = await self._reservations.expire_due(self._batch_size, stuck)
            progress, newly_stuck = count, False
            for product in busy:  # each waited for alone, holding no other row
                try:
                    waited, _ = await self._reservations.expire_due(
                        self._batch_size, stuck, wait_for=product
                    )
                    progress += waited
                except asyncpg.exceptions.LockNotAvailableError:
                    stuck.append(product)
                    newly_stuck = True
            swept += progress
            if (not busy and count < self._batch_size) or not (progress or newly_stuck):
                break
            await asyncio.sleep(0)  # let reservations in between batches
        self.expired_total += swept
        return swept

    async def run(self) -> None:
        while True:
            try:
                if swept := await self.sweep_once():
                    log.info("expired %d holds", swept)
            except Exception:  # a database outage must not end the sweeper for good
                log.exception("sweep failed; retrying")
            await asyncio.sleep(self._interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Sweeper]:
        async with background(self.run(), "hold-sweeper"):
            yield self
