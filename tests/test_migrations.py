"""Migrations: idempotent, and safe when several processes start at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from inventory_graphql.database import migrate, migrations, with_database


@pytest.fixture
async def empty_database(postgres_url: str):
    name = "inventory_migrate_test"
    conn = await asyncpg.connect(postgres_url)
    await conn.execute(f"DROP DATABASE IF EXISTS {name}")
    await conn.execute(f"CREATE DATABASE {name}")
    yield with_database(postgres_url, name)
    await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await conn.close()


async def test_concurrent_migrations_apply_each_file_once(empty_database):
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, 0, len(migrations())]
        assert await migrate(conns[0]) == []
        versions = await conns[0].fetch("SELECT version FROM schema_migration ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in migrations()]
    finally:
        for c in conns:
            await c.close()


def test_migrations_are_numbered_sql_files():
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
