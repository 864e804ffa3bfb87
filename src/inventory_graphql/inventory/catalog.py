"""Products and their stock: reading, creating, restocking."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from inventory_graphql.database import Connection
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.models import (
    InvalidInput,
    Product,
    ProductExists,
    ProductNotFound,
    ProductOutcome,
)
from inventory_graphql.inventory.transactions import in_transaction

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
    RETURNING id, sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting
), movement AS (
    -- The opening stock is the product's first ledger row, in the same statement.
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
    SELECT id, 'CREATE', quantity, 0, 'created' FROM created
)
SELECT sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting FROM created
"""

# The bound check happens in the WHERE clause, under the row lock: never read-then-write.
ADJUST = """
WITH adjusted AS (
    -- Stock may not fall below what is held, nor rise above validation.MAX_STOCK (the
    -- product table's CHECK holds the same number; a test checks all three agree).
    UPDATE product SET quantity = quantity + $2::bigint
    WHERE sku = $1 AND quantity + $2::bigint BETWEEN reserved AND 1000000000
    RETURNING id, sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting
), movement AS (
    -- The ledger row, written only when the update happened.
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
    SELECT id, 'ADJUST', $2, 0, $3 FROM adjusted
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

    async def products(self, skus: Sequence[str] | None = None, first: int = 100) -> list[Product]:
        if skus is None:
            rows = await self._pool.fetch(SELECT_FIRST, first)
        else:
            rows = await self._pool.fetch(SELECT_BY_SKUS, list(skus), first)
        return [Product.from_row(r) for r in rows]

    async def create_product(self, sku: str, name: str, quantity: int) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""
        row = await self._pool.fetchrow(CREATE, sku, name, quantity)
        return Product.from_row(row) if row else ProductExists(sku)

    async def adjust_stock(self, sku: str, delta: int, reason: str) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""

        async def adjust(conn: Connection) -> ProductOutcome:
            row = await conn.fetchrow(ADJUST, sku, delta, reason)
            if row and row["waiting"] > 0:
                # The statement's own row is from before its trigger served the queue:
                # answer the product as the transaction leaves it (offers included).
                row = await conn.fetchrow(SELECT_ONE, sku)
            if row:
                return Product.from_row(row)
            # Nothing changed; read only to explain why.
            current = await conn.fetchrow(SELECT_ONE, sku)
            if current is None:
                return ProductNotFound(sku)
            product = Product.from_row(current)
            if product.quantity + delta < product.reserved:
                return InvalidInput(
                    "delta",
                    f"would leave quantity {product.quantity + delta} below the "
                    f"{product.reserved} reserved",
                )
            return InvalidInput("delta", f"would take quantity above {validation.MAX_STOCK:,}")

        return await in_transaction(self._pool, adjust)

    async def set_purchase_limit(self, sku: str, per_buyer: int | None) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""
        row = await self._pool.fetchrow(SET_PURCHASE_LIMIT, sku, per_buyer)
        return Product.from_row(row) if row else ProductNotFound(sku)

    async def set_low_stock_threshold(self, sku: str, threshold: int | None) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""
        row = await self._pool.fetchrow(SET_LOW_STOCK_THRESHOLD, sku, threshold)
        return Product.from_row(row) if row else ProductNotFound(sku)
