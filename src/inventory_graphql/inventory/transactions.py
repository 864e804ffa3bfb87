"""Running a unit of work in one transaction, retried when PostgreSQL asks for it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar, cast

import asyncpg

from inventory_graphql.database import Connection

T = TypeVar("T")
R = TypeVar("R")

# Deadlocks and serialization failures are PostgreSQL saying "try again"; a client
# must never see them.
RETRIABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
ATTEMPTS = 8


class Rollback(Exception, Generic[R]):
    """Raised inside a unit of work to undo it and hand `result` to the caller."""

    def __init__(self, result: R) -> None:
        super().__init__()
        self.result = result


async def in_transaction(pool: asyncpg.Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `work` in a transaction; retry on deadlock or serialization failure.

    `work` may raise `Rollback(result)` to undo everything and return `result`.
    """
    return await _retried(pool, work, transaction=True)


async def in_one_statement(pool: asyncpg.Pool, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `work`, which runs one statement: PostgreSQL makes it a transaction of its own
    (one round trip, where BEGIN, the statement and COMMIT take three). Retried as above."""
    return await _retried(pool, work, transaction=False)


async def _retried(
    pool: asyncpg.Pool, work: Callable[[Connection], Awaitable[T]], transaction: bool
) -> T:
    for attempt in range(ATTEMPTS):
        try:
            return await _once(pool, work, transaction)
        except Rollback as rollback:
            return cast(T, rollback.result)
        except RETRIABLE:
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
    raise AssertionError("unreachable")


async def _once(
    pool: asyncpg.Pool, work: Callable[[Connection], Awaitable[T]], transaction: bool
) -> T:
    async with pool.acquire() as conn:
        if not transaction:
            return await work(conn)
        async with conn.transaction():
            return await work(conn)
