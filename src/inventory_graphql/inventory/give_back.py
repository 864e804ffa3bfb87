"""Holds nobody will ever learn of, given back in the background.

A request can lose its client after its hold was decided: the shopper closed the tab, the
request ran past its deadline, or the database could not be asked whether the hold had
committed before the answer had to go out as an error. Such request ids queue here; a
background task voids them or releases their holds, retrying until the database answers,
so no unit stays held for a client that can no longer learn the hold's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable

from inventory_graphql.background import background
from inventory_graphql.inventory.reservations import Reservations

log = logging.getLogger(__name__)

BATCH = 500
# Ids kept while the database is away. Past this, new ones are dropped with a warning: a
# hold nobody gives back still ends at its expiry (TTL), the backstop.
MAX_WAITING = 100_000


class GiveBack:
    def __init__(self, reservations: Reservations, *, max_backoff: float = 2.0) -> None:
        self._reservations = reservations
        self._max_backoff = max_backoff
        self._ids: dict[uuid.UUID, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self.released_total = 0

    def add(self, request_ids: Iterable[uuid.UUID]) -> None:
        dropped = 0
        for request_id in request_ids:
            if len(self._ids) < MAX_WAITING:
                self._ids[request_id] = None
            else:
                dropped += 1
        if dropped:
            log.warning("%d holds left to expire by TTL: too many waiting to go back", dropped)
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._ids)

    async def drain(self) -> None:
        """Give back everything queued now (tests, and shutdown)."""
        while self._ids:
            await self._give_back_some()

    async def _give_back_some(self) -> None:
        batch = list(self._ids)[:BATCH]
        self.released_total += await self._reservations.give_back(batch)
        for request_id in batch:
            self._ids.pop(request_id, None)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ids:
                try:
                    await self._give_back_some()
                    backoff = 0.05
                except Exception as error:
                    log.warning("giving back %d holds failed, retrying: %r", len(self._ids), error)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[GiveBack]:
        async with background(self._run(), "hold-give-back"):
            yield self
        with contextlib.suppress(Exception):  # last chance; the holds' TTL is the backstop
            async with asyncio.timeout(5):
                await self.drain()
