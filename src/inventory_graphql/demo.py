"""A small catalog for first-time users (`serve --demo`)."""

from __future__ import annotations

import asyncpg

from inventory_graphql.config import Settings
from inventory_graphql.database import migrate
from inventory_graphql.inventory.service import InventoryService

CATALOG = [
    ("CONSOLE-X", "Game console, restock edition", 100),
    ("TICKET-FLOOR", "Concert ticket, floor", 250),
    ("TICKET-BALCONY", "Concert ticket, balcony", 500),
    ("SNEAKER-42", "Limited sneaker, size 42", 12),
    ("VINYL-LTD", "Limited vinyl pressing", 300),
    ("LAST-ONE", "The very last one", 1),
]


async def load_demo_catalog(database_url: str) -> None:
    """Create the demo products, but only into an empty catalog."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        service = InventoryService(pool, Settings())  # its background work is not needed
        if await service.products(first=1):
            return
        for sku, name, quantity in CATALOG:
            await service.create_product(sku, name, quantity)
    finally:
        await pool.close()
