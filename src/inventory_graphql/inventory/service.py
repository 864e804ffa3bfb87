"""The service as the layers above see it: one object built per app lifespan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from inventory_graphql.config import Settings
from inventory_graphql.inventory.catalog import Catalog
from inventory_graphql.inventory.coalescer import ReservationCoalescer
from inventory_graphql.inventory.models import LineRequest, ReserveOutcome
from inventory_graphql.inventory.reservations import Reservations


@dataclass(frozen=True)
class InventoryService:
    pool: asyncpg.Pool
    catalog: Catalog
    reservations: Reservations
    # None: every reserve is its own transaction. Its worker runs in the app's lifespan.
    coalescer: ReservationCoalescer | None = None

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
        coalescer = (
            ReservationCoalescer(pool, reservations, settings.max_batch, on_batch)
            if coalesce
            else None
        )
        return cls(pool=pool, catalog=Catalog(pool), reservations=reservations, coalescer=coalescer)

    async def reserve(
        self,
        lines: Sequence[LineRequest],
        ttl_seconds: int | None = None,
        idempotency_key: str | None = None,
    ) -> ReserveOutcome:
        """Hold every line or none of them, coalesced with concurrent requests when enabled."""
        reserver = self.coalescer or self.reservations
        return await reserver.reserve(lines, ttl_seconds, idempotency_key)
