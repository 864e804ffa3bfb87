"""The service as the layers above see it: one object built per app lifespan."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from inventory_graphql.config import Settings
from inventory_graphql.inventory.catalog import Catalog
from inventory_graphql.inventory.reservations import Reservations


@dataclass(frozen=True)
class InventoryService:
    pool: asyncpg.Pool
    catalog: Catalog
    reservations: Reservations

    @classmethod
    def from_pool(cls, pool: asyncpg.Pool, settings: Settings) -> InventoryService:
        return cls(
            pool=pool,
            catalog=Catalog(pool),
            reservations=Reservations(pool, settings.hold_ttl_seconds),
        )
