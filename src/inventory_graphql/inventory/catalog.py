"""Products and their stock: reading, creating, restocking."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from inventory_graphql.inventory import validation
from inventory_graphql.inventory.models import (
    InvalidInput,
    Product,
    ProductExists,
    ProductNotFound,
    ProductOutcome,
)
from inventory_graphql.inventory.transactions import in_transaction

PRODUCT_COLUMNS = "sku, name, quantity, reserved, version, updated_at"

SELECT_BY_SKUS = f"""
SELECT {PRODUCT_COLUMNS} FROM product WHERE sku = any($1::text[]) ORDER BY sku LIMIT $2
"""

SELECT_FIRST = f"SELECT {PRODUCT_COLUMNS} FROM product ORDER BY sku LIMIT $1"

CREATE = f"""
WITH created AS (
    INSERT INTO product (sku, name, quantity) VALUES ($1, $2, $3)
    ON CONFLICT (sku) DO NOTHING
    RETURNING id, {PRODUCT_COLUMNS}
), movement AS (
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
    SELECT id, 'CREATE', quantity, 0, 'created' FROM created
)
SELECT {PRODUCT_COLUMNS} FROM created
"""

# The bound check happens in the WHERE clause, under the row lock: never read-then-write.
ADJUST = f"""
WITH adjusted AS (
    UPDATE product SET quantity = quantity + $2::bigint
    WHERE sku = $1 AND quantity + $2::bigint BETWEEN reserved AND {validation.MAX_STOCK}
    RETURNING id, {PRODUCT_COLUMNS}
), movement AS (
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
    SELECT id, 'ADJUST', $2, 0, $3 FROM adjusted
)
SELECT {PRODUCT_COLUMNS} FROM adjusted
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

    async def product(self, sku: str) -> Product | None:
        found = await self.products([sku], 1)
        return found[0] if found else None

    async def create_product(self, sku: str, name: str, quantity: int) -> ProductOutcome:
        if invalid := validation.check_new_product(sku, name, quantity):
            return invalid
        row = await self._pool.fetchrow(CREATE, sku, name, quantity)
        return Product.from_row(row) if row else ProductExists(sku)

    async def adjust_stock(self, sku: str, delta: int, reason: str) -> ProductOutcome:
        if invalid := validation.check_adjustment(sku, delta, reason):
            return invalid

        async def adjust(conn: asyncpg.Connection) -> ProductOutcome:
            row = await conn.fetchrow(ADJUST, sku, delta, reason)
            if row:
                return Product.from_row(row)
            # Nothing changed; read only to explain why.
            current = await conn.fetchrow(
                f"SELECT {PRODUCT_COLUMNS} FROM product WHERE sku = $1", sku
            )
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
