"""Concurrent reads of products by sku share one statement.

A product page's read is one indexed lookup that PostgreSQL answers in microseconds;
what it costs is the round trip around it (a pool checkout, the protocol, a wake-up per
reply). Reads that arrive while one statement is in flight wait for the next, which
serves all of them at once: every read still starts after it was asked for and ends
before it is answered, so it sees what a read of its own would have seen at some
moment in between. At most `max_skus` skus go into one statement; a failure is every
waiting read's failure, as it would have been alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from inventory_graphql.inventory.models import Product

MAX_SKUS = 1_000  # in one statement


class ProductReads:
    def __init__(self, pool: asyncpg.Pool, query: str, *, max_skus: int = MAX_SKUS) -> None:
        self._pool = pool
        self._query = query  # (skus text[], limit) -> product rows in sku order
        self._max_skus = max_skus
        self._waiting: list[tuple[Sequence[str], asyncio.Future[list[Product]]]] = []
        self._flight: asyncio.Task[None] | None = None

    async def read(self, skus: Sequence[str], first: int) -> list[Product]:
        """These skus' products in the database's sku order, at most `first` of them."""
        if not skus or first <= 0:
            return []
        future: asyncio.Future[list[Product]] = asyncio.get_running_loop().create_future()
        self._waiting.append((skus, future))
        if self._flight is None:
            self._flight = asyncio.create_task(self._fly())
        found = await future
        return found[:first] if len(found) > first else found

    async def _fly(self) -> None:
        batch: list[tuple[Sequence[str], asyncio.Future[list[Product]]]] = []
        try:
            while self._waiting:
                batch, wanted = self._take()
                try:
                    rows = await self._pool.fetch(self._query, list(wanted), len(wanted))
                except Exception as error:  # every read of the batch fails as it would alone
                    _fail(batch, error)
                    continue
                products = [Product.from_row(r) for r in rows]
                for skus, future in batch:
                    if not future.done():  # not cancelled (its client left)
                        asked = set(skus)
                        future.set_result([p for p in products if p.sku in asked])
        except BaseException:  # cancelled (shutdown): nobody waits for an answer never coming
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting = []
            raise
        finally:
            self._flight = None

    def _take(
        self,
    ) -> tuple[list[tuple[Sequence[str], asyncio.Future[list[Product]]]], dict[str, None]]:
        """The waiting reads that fit in one statement (at least one), and their skus."""
        wanted: dict[str, None] = {}
        taken = 0
        for skus, _ in self._waiting:
            if taken and len(wanted) + len(skus) > self._max_skus:
                break
            wanted.update(dict.fromkeys(skus))
            taken += 1
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch, wanted


def _fail(
    reads: list[tuple[Sequence[str], asyncio.Future[list[Product]]]], error: Exception
) -> None:
    for _, future in reads:
        if not future.done():
            future.set_exception(error)
