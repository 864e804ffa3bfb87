"""Products and their stock: reading, creating, limits (restocks: admin_writes.py)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from inventory_graphql.inventory.models import (
    Product,
    ProductExists,
    ProductNotFound,
    ProductOutcome,
)
from inventory_graphql.inventory.product_reads import ProductReads

# Every statement returns a product's columns in this order (Product.from_row reads them).
SELECT_BY_SKUS = """
SELECT sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
       low_stock_threshold
FROM product WHERE sku = any($1::text[]) ORDER BY sku LIMIT $2
"""

SELECT_FIRST = """
SELECT sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
       low_stock_threshold
FROM product ORDER BY sku LIMIT $1
"""

SELECT_ONE = """
SELECT sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
       low_stock_threshold
FROM product WHERE sku = $1
"""

CREATE = """
WITH created AS (
    -- A sku that exists already inserts nothing, and then the ledger gets nothing.
    INSERT INTO product (sku, name, quantity) VALUES ($1, $2, $3)
    ON CONFLICT (sku) DO NOTHING
    RETURNING id, sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
              feed_key
), movement AS (
    -- The opening stock is the product's first ledger row, in the same statement.
    -- With its numbers and place in the feed (migration 011).
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason,
                                feed_key, quantity_after, reserved_after, version_after)
    SELECT id, 'CREATE', quantity, 0, 'created', feed_key, quantity, reserved, version
    FROM created
)
SELECT sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting FROM created
"""

# A restock in one statement, the bound checked in the WHERE clause under the row lock. The
# service's admin writes (admin_writes.py) lock first and compare versions; this plain form
# is what an operator types into psql, and tests do the same.
ADJUST = """
WITH adjusted AS (
    -- Stock may not fall below what is held, nor rise above validation.MAX_STOCK (the
    -- product table's CHECK holds the same number; a test checks all three agree).
    UPDATE product SET quantity = quantity + $2::bigint
    WHERE sku = $1 AND quantity + $2::bigint BETWEEN reserved AND 1000000000
    RETURNING id, sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
              greatest(pg_current_xact_id(), feed_key) AS feed_key
), movement AS (
    -- The ledger row, written only when the update happened, with the numbers after it.
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason,
                                feed_key, quantity_after, reserved_after, version_after)
    SELECT id, 'ADJUST', $2, 0, $3, feed_key, quantity, reserved, version FROM adjusted
)
SELECT sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting FROM adjusted
"""

SET_PURCHASE_LIMIT = """
UPDATE product SET purchase_limit = $2 WHERE sku = $1
RETURNING sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
          low_stock_threshold
"""

# The crossing events come from migration 008's trigger; setting a threshold crosses none.
SET_LOW_STOCK_THRESHOLD = """
UPDATE product SET low_stock_threshold = $2 WHERE sku = $1
RETURNING sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
          low_stock_threshold
"""


class Catalog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._reads = ProductReads(pool, SELECT_BY_SKUS)

    async def products(self, skus: Sequence[str] | None = None, first: int = 100) -> list[Product]:
        if skus is None:
            rows = await self._pool.fetch(SELECT_FIRST, first)
        else:
            return await self._reads.read(skus, first)  # shared with concurrent reads
        return [Product.from_row(r) for r in rows]

    async def create_product(self, sku: str, name: str, quantity: int) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""
        row = await self._pool.fetchrow(CREATE, sku, name, quantity)
        return Product.from_row(row) if row else ProductExists(sku)

    async def set_purchase_limit(self, sku: str, per_buyer: int | None) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""
        row = await self._pool.fetchrow(SET_PURCHASE_LIMIT, sku, per_buyer)
        return Product.from_row(row) if row else ProductNotFound(sku)

    async def set_low_stock_threshold(self, sku: str, threshold: int | None) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""
        row = await self._pool.fetchrow(SET_LOW_STOCK_THRESHOLD, sku, threshold)
        return Product.from_row(row) if row else ProductNotFound(sku)
