"""Concurrent product reads share statements, and each read gets what it asked for."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from inventory_graphql.inventory.catalog import SELECT_BY_SKUS
from inventory_graphql.inventory.product_reads import ProductReads


class CountingPool:
    """The real pool, counting the statements it is asked to run."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements = 0

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        self.statements += 1
        return await self.pool.fetch(query, *args)


async def test_concurrent_reads_share_statements_and_get_their_own_products(
    pool: asyncpg.Pool, make_product: Any
) -> None:
    skus = sorted([await make_product(i + 1) for i in range(6)])
    counting = CountingPool(pool)
    reads = ProductReads(counting, SELECT_BY_SKUS)  # type: ignore[arg-type]
    asked = [([skus[i % 6], skus[(i + 1) % 6], "NOPE-404"], 1 + i % 3) for i in range(60)] + [
        ([], 5),
        (skus, 0),
        ([skus[2], skus[2]], 5),
    ]
    answers = await asyncio.gather(*(reads.read(s, first) for s, first in asked))
    by_sku = {r["sku"]: r for r in await pool.fetch(SELECT_BY_SKUS, skus, 100)}
    for (wanted, first), answer in zip(asked, answers, strict=True):
        expected = [s for s in skus if s in wanted][:first]  # the database's order
        assert [p.sku for p in answer] == expected
        for product in answer:
            assert product.quantity == by_sku[product.sku]["quantity"]
    # The first read's statement runs alone; every read waiting meanwhile shares the next.
    assert counting.statements <= 3, counting.statements


async def test_a_failed_statement_fails_each_read_in_it_and_the_next_reads_run(
    pool: asyncpg.Pool, make_product: Any
) -> None:
    sku = await make_product(3)
    failing = ProductReads(pool, "SELECT 1 / (array_length($1::text[], 1) - $2)")
    results = await asyncio.gather(
        *(failing.read([sku], 5) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, asyncpg.DivisionByZeroError) for r in results), results
    reads = ProductReads(pool, SELECT_BY_SKUS)
    assert [p.sku for p in await reads.read([sku], 5)] == [sku]


async def test_a_cancelled_read_leaves_the_others_answered(
    pool: asyncpg.Pool, make_product: Any
) -> None:
    sku = await make_product(4)
    reads = ProductReads(pool, SELECT_BY_SKUS)
    first = asyncio.create_task(reads.read([sku], 1))
    await asyncio.sleep(0)  # its statement is in flight
    waiting = [asyncio.create_task(reads.read([sku], 1)) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()
    assert [p.sku for p in await first] == [sku]
    for task in waiting[1:]:
        assert [p.sku for p in await task] == [sku]
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
