"""One subscriber's pending updates: the latest state per sku, nothing more.

A subscriber that reads slowly skips versions instead of growing a queue, so memory per
subscriber is bounded by its number of skus whatever the client's speed; one that reads
fast still sees every change. A subscriber may instead have its updates forwarded as they
are offered (direct delivery writes them to its socket from the publisher's task, without
waking the subscriber's own).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from inventory_graphql.inventory.models import StockLevel


class Forwarding(Protocol):
    """Where a mailbox hands its updates instead of keeping them."""

    def offer(self, levels: Sequence[StockLevel]) -> None: ...

    @property
    def pending(self) -> int:
        """Updates handed over and not yet delivered (at most one per sku)."""
        ...


class Mailbox:
    def __init__(self, skus: frozenset[str]) -> None:
        self.skus = skus
        self._pending: dict[str, StockLevel] = {}
        self._newest: dict[str, int] = {}  # highest version offered per sku
        self._ready = asyncio.Event()
        self._forward: Forwarding | None = None

    def offer(self, level: StockLevel) -> None:
        """Keep `level` if it is newer than anything this subscriber has seen for its sku
        (or forward it, see `forward`)."""
        if level.version <= self._newest.get(level.sku, 0):
            return
        self._newest[level.sku] = level.version
        if self._forward is not None:
            self._forward.offer((level,))
            return
        self._pending[level.sku] = level
        self._ready.set()

    def offer_all(self, levels: Sequence[StockLevel]) -> None:
        """Offer levels published together (forwarded together, too)."""
        if self._forward is None:
            for level in levels:
                self.offer(level)
            return
        newer = []
        for level in levels:
            if level.version > self._newest.get(level.sku, 0):
                self._newest[level.sku] = level.version
                newer.append(level)
        if newer:
            self._forward.offer(newer)

    def forward(self, to: Forwarding) -> None:
        """From now on hand every newer level to `to` when it is offered (in the offering
        task), starting with what is pending; take() waits until `hand_back`."""
        self._forward = to
        taken = list(self._pending.values())
        self._pending.clear()
        self._ready.clear()
        if taken:
            to.offer(taken)

    def hand_back(self, levels: Iterable[StockLevel]) -> None:
        """Stop forwarding; `levels` (forwarded, not delivered: newer than any delivered)
        are pending again, for take(), and so is what is offered from now on."""
        self._forward = None
        for level in levels:
            self._pending[level.sku] = level
        if self._pending:
            self._ready.set()

    @property
    def pending(self) -> int:
        forwarded = self._forward.pending if self._forward is not None else 0
        return len(self._pending) + forwarded

    async def take(self) -> list[StockLevel]:
        """Wait for updates; return them all, oldest sku first."""
        await self._ready.wait()
        self._ready.clear()
        taken = list(self._pending.values())
        self._pending.clear()
        return taken
