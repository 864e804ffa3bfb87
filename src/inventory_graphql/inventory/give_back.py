"""Holds nobody will ever learn of, given back in the background.

A request can lose its client after its hold was decided: the shopper closed the tab, the
request ran past its deadline, or the database could not be asked whether the hold had
committed before the answer had to go out as an error. Such request ids queue here; a
background task voids them or releases their holds, retrying until the database answers,
so no unit stays held for a client that can no longer learn the hold's id. (Backlog is the
queue itself; join_give_back.py uses it for waiting-list joins.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable
from typing import Generic, Self, TypeVar

from inventory_graphql.background import background
from inventory_graphql.inventory.reservations import Reservations

log = logging.getLogger(__name__)

BATCH = 500
# Ids kept while the database is away. Past this, new ones are dropped with a warning: a
# hold nobody gives back still ends at its expiry (TTL), the backstop.
MAX_WAITING = 100_000

T = TypeVar("T", bound=Hashable)


class Backlog(Generic[T]):
    """What a fault left undecided, given back in batches by `give_back` (which returns
    how many it undid), retried with backoff until the database answers. Bounded: past
    `max_waiting` new items are dropped with a warning (each kind says what then)."""

    def __init__(
        self,
        give_back: Callable[[list[T]], Awaitable[int]],
        *,
        what: str,
        batch: int,
        max_waiting: int,
        max_backoff: float,
    ) -> None:
        self._give_back = give_back
        self._what = what
        self._batch = batch
        self._max_waiting = max_waiting
        self._max_backoff = max_backoff
        self._items: dict[T, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self.undone_total = 0

    def add(self, items: Iterable[T]) -> None:
        dropped = 0
        for item in items:
            if len(self._items) < self._max_waiting:
                self._items[item] = None
            else:
                dropped += 1
        if dropped:
            log.warning("%d %s dropped: too many waiting to go back", dropped, self._what)
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._items)

    async def drain(self) -> None:
        """Give back everything queued now (tests, and shutdown)."""
        while self._items:
            await self._give_back_some()

    async def _give_back_some(self) -> None:
        batch = list(self._items)[: self._batch]
        self.undone_total += await self._give_back(batch)
        for item in batch:
            self._items.pop(item, None)

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._items:
                try:
                    await self._give_back_some()
                    backoff = 0.05
                except Exception as error:
                    log.warning(
                        "giving back %d %s failed, retrying: %r",
                        len(self._items),
                        self._what,
                        error,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        async with background(self._run(), f"give-back {self._what}"):
            yield self
        with contextlib.suppress(Exception):  # last chance; each kind has its backstop
            async with asyncio.timeout(5):
                await self.drain()


class GiveBack(Backlog[uuid.UUID]):
    """Request ids whose holds nobody will learn of: voided, or their holds released (a
    hold left behind still ends at its expiry)."""

    def __init__(self, reservations: Reservations, *, max_backoff: float = 2.0) -> None:
        super().__init__(
            reservations.give_back,
            what="holds",
            batch=BATCH,
            max_waiting=MAX_WAITING,
            max_backoff=max_backoff,
        )

    @property
    def released_total(self) -> int:
        return self.undone_total
