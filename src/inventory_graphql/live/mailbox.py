"""One subscriber's pending updates: the latest state per sku, nothing more.

A subscriber that reads slowly skips versions instead of growing a queue, so memory per
subscriber is bounded by its number of skus whatever the client's speed; one that reads
fast still sees every change.
"""

from __future__ import annotations

import asyncio

from inventory_graphql.inventory.models import StockLevel


class Mailbox:
    def __init__(self, skus: frozenset[str]) -> None:
        self.skus = skus
        self._pending: dict[str, StockLevel] = {}
        self._newest: dict[str, int] = {}  # highest version offered per sku
        self._ready = asyncio.Event()

    def offer(self, level: StockLevel) -> None:
        """Keep `level` if it is newer than anything this subscriber has seen for its sku."""
        if level.version <= self._newest.get(level.sku, 0):
            return
        self._newest[level.sku] = level.version
        self._pending[level.sku] = level
        self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def take(self) -> list[StockLevel]:
        """Wait for updates; return them all, oldest sku first."""
        await self._ready.wait()
        self._ready.clear()
        taken = list(self._pending.values())
        self._pending.clear()
        return taken
