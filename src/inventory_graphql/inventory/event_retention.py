"""Retention of the stock event feed: the oldest events go after INVENTORY_EVENT_RETENTION_HOURS.

Every server process runs a pruner; an advisory lock lets one prune at a time (the
others skip the round). Each round deletes bounded batches, one short transaction each,
from the start of the feed, and moves the horizon with them (stock_events.prune). The
ledger (stock_movement) is never pruned: it stays the record `check` sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg

from inventory_graphql.background import background
from inventory_graphql.inventory import stock_events

log = logging.getLogger(__name__)

BATCH = 1000  # events per transaction: short transactions, short locks


class Pruner:
    def __init__(self, pool: asyncpg.Pool, retention_hours: float, interval: float) -> None:
        self._pool = pool
        self._retention = timedelta(hours=retention_hours)
        self._interval = interval
        self.pruned_total = 0

    async def prune_once(self) -> int:
        """Delete every final event older than the retention now, batch by batch."""
        pruned = 0
        while True:
            cutoff = datetime.now(UTC) - self._retention
            async with self._pool.acquire() as conn:
                count = await stock_events.prune(conn, cutoff, BATCH)
            pruned += count
            if count < BATCH:
                break
            await asyncio.sleep(0)  # let requests in between batches
        self.pruned_total += pruned
        return pruned

    async def run(self) -> None:
        while True:
            try:
                if pruned := await self.prune_once():
                    log.info("pruned %d stock events past their retention", pruned)
            except Exception:  # a database outage must not end the pruner for good
                log.warning("pruning stock events failed; retrying", exc_info=True)
            await asyncio.sleep(self._interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Pruner]:
        async with background(self.run(), "event-pruner"):
            yield self
