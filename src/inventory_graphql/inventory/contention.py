"""Products whose rows someone else keeps locked, so that they cost only their own requests.

A row held by a long transaction (a psql prompt left open, a stuck job) makes every
statement that touches it wait up to lock_timeout. Once a product has timed out, its
reserves go one at a time per process, in a lane of their own, until one gets through:
the rest of the traffic never queues behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class Contention:
    def __init__(self) -> None:
        self._gates: dict[str, asyncio.Lock] = {}

    def mark(self, skus: Iterable[str]) -> None:
        for sku in skus:
            self._gates.setdefault(sku, asyncio.Lock())

    def clear(self, skus: Iterable[str]) -> None:
        for sku in skus:
            self._gates.pop(sku, None)

    def contended(self, skus: Iterable[str]) -> list[str]:
        if not self._gates:  # the normal case, on every reserve
            return []
        return sorted(sku for sku in skus if sku in self._gates)

    @property
    def count(self) -> int:
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, skus: Iterable[str]) -> AsyncIterator[None]:
        """Hold the gates of those of `skus` that are contended (in sku order: no cycles)."""
        contended = self.contended(skus)
        if not contended:
            yield
            return
        async with contextlib.AsyncExitStack() as gates:
            for sku in contended:
                gate = self._gates.get(sku)
                if gate is not None:
                    await gates.enter_async_context(gate)
            yield
