"""The benchmarks' database: the server, seeded products, stock put back and settled,
and `inventory-graphql check`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.harness.plan import STOCK
from bench.harness.results import Buyers, Check
from inventory_graphql.embedded_db import embedded_postgres
from inventory_graphql.live.channel import TRIGGER

# The trigger's name is a constant of ours (live/channel.py), not input.
DISABLE_NOTIFY = f"ALTER TABLE product DISABLE TRIGGER {TRIGGER}"
ENABLE_NOTIFY = f"ALTER TABLE product ENABLE TRIGGER {TRIGGER}"

SEED = """
WITH p AS (
    INSERT INTO product (sku, name, quantity)
    SELECT $1 || '-' || i, 'flash sale ' || $1, $3 FROM generate_series(0, $2 - 1) i
    RETURNING id, quantity
)
INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
SELECT id, 'CREATE', quantity, 0, 'bench' FROM p
RETURNING product_id
"""

CONSUMED = "SELECT coalesce(sum(reserved), 0)::bigint FROM product WHERE id BETWEEN $1 AND $2"

VERIFY = """
SELECT coalesce(sum(reserved), 0)::bigint AS consumed,
       count(*) FILTER (WHERE reserved > quantity) AS oversold_products,
       (SELECT coalesce(sum(quantity), 0)::bigint FROM reservation_line
        WHERE product_id BETWEEN $1 AND $2) AS held
FROM product WHERE id BETWEEN $1 AND $2
"""


LIMIT_PURCHASES = "UPDATE product SET purchase_limit = $3 WHERE id BETWEEN $1 AND $2"

# Who holds the point's products: holds, distinct buyers, and every (buyer, product)
# above the product's limit (units held plus bought; an anonymous hold of a limited
# product counts as above it too: nobody may hold one without a buyer).
BUYERS = """
WITH tally AS (
    SELECT r.buyer, p.purchase_limit, sum(l.quantity - l.released) AS units, count(*) AS holds
    FROM reservation r
    JOIN reservation_line l ON l.reservation_id = r.id
    JOIN product p ON p.id = l.product_id
    WHERE l.product_id BETWEEN $1 AND $2
    GROUP BY p.id, p.purchase_limit, r.buyer
)
SELECT coalesce(sum(holds), 0)::bigint AS holds,
       count(DISTINCT buyer) AS buyers,
       coalesce(sum(holds) FILTER (WHERE buyer IS NULL), 0)::bigint AS anonymous_holds,
       count(*) FILTER (WHERE purchase_limit IS NOT NULL
                        AND (buyer IS NULL OR units > purchase_limit)) AS above_limit
FROM tally
"""


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """BENCH_DATABASE_URL's server, or a fresh embedded one (removed afterwards)."""
    if url := os.environ.get("BENCH_DATABASE_URL"):
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="inventory-bench-") as tmp,
        embedded_postgres(Path(tmp)) as url,
    ):
        yield url


@dataclass(frozen=True)
class Products:
    """A point's own products: skus PREFIX-0 .. PREFIX-(count-1), ids first_id..last_id."""

    prefix: str
    count: int
    first_id: int
    last_id: int

    @property
    def first_sku(self) -> str:
        return f"{self.prefix}-0"


async def seed(conn: asyncpg.Connection, prefix: str, count: int) -> Products:
    """`count` products of STOCK units each, with the matching CREATE ledger rows."""
    ids = [r["product_id"] for r in await conn.fetch(SEED, prefix, count, STOCK)]
    first, last = min(ids), max(ids)
    # pgbench picks ids from a range, so the range must be exactly these products.
    assert last - first + 1 == count, "product ids are not contiguous"
    return Products(prefix, count, first, last)


async def migrated_by(src: Path, server_url: str, name: str) -> str:
    """A fresh database `name`, migrated by the code in `src` (an exported commit's
    migrations, not this checkout's); its URL."""
    program = (
        "import asyncio, sys\n"
        "from inventory_graphql.database import create_migrated_database\n"
        "print(asyncio.run(create_migrated_database(sys.argv[1], sys.argv[2], replace=True)))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        server_url,
        name,
        env={**os.environ, "PYTHONPATH": str(src)},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"migrating {name} with {src} failed")
    return out.decode().strip().splitlines()[-1]


async def postgres_settings(conn: asyncpg.Connection) -> dict[str, str]:
    names = ["server_version", "max_connections", "shared_buffers", "synchronous_commit"]
    return {name: await conn.fetchval(f"SHOW {name}") for name in names}


async def applied_migrations(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT version, name FROM schema_migration ORDER BY version")
    return [f"{r['version']:03}_{r['name']}" for r in rows]


@contextlib.asynccontextmanager
async def notify_trigger_off(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Live updates off: the statement-level NOTIFY trigger disabled inside the block."""
    await conn.execute(DISABLE_NOTIFY)
    try:
        yield
    finally:
        await conn.execute(ENABLE_NOTIFY)


async def run_check(url: str) -> Check:
    """`inventory-graphql check` on the whole database, as an operator would run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inventory_graphql",
        "check",
        env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    lines = out.decode().strip().splitlines()
    return Check(
        ok=proc.returncode == 0,
        summary=lines[-1] if lines else "",
        mismatches=[line for line in lines if line.startswith("MISMATCH")][:10],
    )


async def put_back(conn: asyncpg.Connection, products: Products) -> int:
    """Undo holds that bypassed the ledger, so `check` balances; return what was held."""
    consumed: int = await conn.fetchval(CONSUMED, products.first_id, products.last_id)
    await conn.execute(
        "UPDATE product SET reserved = 0 WHERE id BETWEEN $1 AND $2",
        products.first_id,
        products.last_id,
    )
    return consumed


async def settled(conn: asyncpg.Connection, products: Products) -> int:
    """Stock consumed once requests cut off by wrk's stop have finished on the server."""
    previous = -1
    for _ in range(200):
        now: int = await conn.fetchval(CONSUMED, products.first_id, products.last_id)
        if now == previous:
            return now
        previous = now
        await asyncio.sleep(0.3)
    raise RuntimeError(f"stock of {products.prefix} still moving after 60 s")


@dataclass(frozen=True)
class Stock:
    """What the point's products hold once settled (VERIFY)."""

    consumed: int
    oversold_products: int
    held: int  # units in reservation lines


async def stock(conn: asyncpg.Connection, products: Products) -> Stock:
    row = await conn.fetchrow(VERIFY, products.first_id, products.last_id)
    assert row is not None  # an aggregate: always one row
    return Stock(row["consumed"], row["oversold_products"], row["held"])


async def limit_purchases(conn: asyncpg.Connection, products: Products, per_buyer: int) -> None:
    """A purchase limit on every product of the point (not a stock change: no ledger row)."""
    await conn.execute(LIMIT_PURCHASES, products.first_id, products.last_id, per_buyer)


async def buyers(
    conn: asyncpg.Connection, products: Products, purchase_limit: int | None
) -> Buyers:
    row = await conn.fetchrow(BUYERS, products.first_id, products.last_id)
    assert row is not None  # an aggregate: always one row
    return Buyers(
        purchase_limit,
        row["holds"],
        row["buyers"],
        row["anonymous_holds"],
        row["above_limit"],
    )
