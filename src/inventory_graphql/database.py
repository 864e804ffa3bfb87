"""Connections and migrations. Knows nothing of GraphQL or HTTP."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from inventory_graphql.config import Settings

log = logging.getLogger(__name__)

# A connection of its own, or one lent by a pool: both run statements alike.
Connection = asyncpg.Connection | PoolConnectionProxy

# Any constant works; it only has to be the same in every process running migrations.
_MIGRATION_LOCK = 0x1E7E_0001


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The numbered `.sql` files shipped in `inventory_graphql/migrations`, in order."""
    found = []
    for entry in resources.files("inventory_graphql.migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


@functools.cache
def latest_migration() -> int:
    """The version the shipped migrations bring a database to (read once per process)."""
    return migrations()[-1].version


async def migrate(conn: Connection, *, upto: int | None = None) -> list[Migration]:
    """Apply the migrations not yet applied (up to version `upto`, if given: a database as
    an older release left it, for upgrade tests); return those it applied.

    Safe when several processes start at once: they queue on an advisory lock and the
    later ones find nothing left to do.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migration (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        applied = []
        for migration in migrations():
            if migration.version in done or (upto is not None and migration.version > upto):
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


CREATE_DATABASE = "SELECT format('CREATE DATABASE %I', $1::text)"
DROP_DATABASE = "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)"


def with_database(url: str, name: str) -> str:
    """`url` with its database name replaced by `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_migrated_database(server_url: str, name: str, *, replace: bool = False) -> str:
    """Create database `name` on the server of `server_url`, migrate it; return its URL.

    For tests and benchmarks, which want a database of their own on a shared server.
    """
    conn = await asyncpg.connect(server_url)
    try:
        # A database name cannot be a parameter: PostgreSQL quotes it (format's %I).
        if replace:
            await conn.execute(await conn.fetchval(DROP_DATABASE, name))
        await conn.execute(await conn.fetchval(CREATE_DATABASE, name))
    finally:
        await conn.close()
    url = with_database(server_url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


APPLICATION_NAME = "inventory-graphql"


class BoundedPool(asyncpg.Pool):
    """asyncpg's pool, but every acquire waits at most `acquire_timeout` by default, and
    a connection that breaks on its way back is dropped without an error.

    asyncpg's own default is to wait forever, and its shortcuts (`pool.fetch` and the
    like) acquire with that default; overriding `acquire` bounds them all in one place.
    """

    def __init__(self, *args: Any, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        # Returning a connection resets it, which fails on a connection that broke just
        # after its last statement; asyncpg then discards it. That error must never
        # replace a result the database has committed (nor the error on its way out).
        try:
            await super().release(connection, timeout=timeout)
        except Exception as error:
            log.warning("discarded a broken pool connection: %r", error)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What a pool connection needs on its way back: nothing more than asyncpg does first
    (it rolls back a transaction left open and drops listeners).

    asyncpg's default also sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: a second round trip for each query a pool shortcut runs
    (product reads; each coalesced batch). Pool users leave no session state to undo:
    settings are `SET LOCAL` or startup parameters, advisory locks are `_xact_` ones
    (the migration lock is released explicitly), cursors live in transactions, and LISTEN
    has connections of its own.
    """


@contextlib.asynccontextmanager
async def connect_pool(database_url: str, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    # A small pool on purpose: hundreds of backends fighting over one hot row are slower
    # than a few, so requests queue in the application instead.
    # A short connect timeout: while the database is away, requests fail fast instead of
    # hanging on a connection attempt.
    # The deadlines are session defaults (startup parameters): no round trip per
    # transaction.
    # The deadlines are also asyncpg's create_pool defaults below: create_pool takes no
    # pool class, so the subclass is built as create_pool would build it.
    pool = BoundedPool(
        database_url,
        acquire_timeout=settings.request_timeout_seconds,
        min_size=1,
        max_size=settings.pool_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        reset=_keep_session,
        timeout=5,
        server_settings={
            "application_name": APPLICATION_NAME,
            "lock_timeout": str(settings.lock_timeout_ms),
            "statement_timeout": str(settings.statement_timeout_ms),
            # Read by the waiting list's trigger (migration 006) when it offers a hold.
            "inventory.waitlist_hold_seconds": str(settings.waitlist_hold_seconds),
        },
    )
    await pool
    try:
        yield pool
    finally:
        await pool.close()
