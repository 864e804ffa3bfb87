"""Safe admin writes: adjustStock, setStock and adjustStocks. Compare-and-set against a
product's version, idempotent by key, every ledger row carrying who (the admin token's
name), why (the reason) and the caller's reference.

The products are locked first, in sku order (as everywhere: no deadlocks). The checks
are made on the numbers read under those locks, and the write follows in one statement
whose WHERE repeats them, its ledger rows selected from the UPDATE's RETURNING (ledger
ids are taken under the products' locks, as stock events need). So a refusal changes
nothing, and what was checked is what is written.

Idempotency keys are per admin (migration 009). The first request with a key takes it,
applies and stores its answer in one transaction; a concurrent one waits for that
transaction (on the key's primary key, within lock_timeout) and then replays the answer
as it was given, or answers IdempotencyKeyReused for other arguments. Refusals met in
the database (not found, VersionConflict, a bound) are stored too: one key, one answer.
Input refused before the database (malformed values) takes no key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from inventory_graphql.background import background
from inventory_graphql.database import Connection
from inventory_graphql.inventory import validation
from inventory_graphql.inventory.models import (
    AdjustedProducts,
    BulkAdjustOutcome,
    IdempotencyKeyReused,
    InvalidInput,
    Product,
    ProductNotFound,
    ProductOutcome,
    QuantityBelowReserved,
    StockAdjustment,
    VersionConflict,
)
from inventory_graphql.inventory.transactions import in_transaction

log = logging.getLogger(__name__)

MAX_ADJUSTMENTS = 1000  # products per adjustStocks
MAX_REFERENCE = 255  # as stock_movement's CHECK (migration 008)
KEY_RETENTION_SECONDS = 24 * 3600  # a key replays for at least this long
PRUNE_INTERVAL_SECONDS = 300.0
PRUNE_BATCH = 1000  # keys deleted per statement: short transactions, whatever the backlog

_PRODUCT = """sku, name, quantity, reserved, version, updated_at, purchase_limit, waiting,
       low_stock_threshold"""

# The products' rows, locked in sku order; the numbers every check reads.
LOCK = f"""
SELECT {_PRODUCT}
FROM product WHERE sku = any($1::text[]) ORDER BY sku FOR UPDATE
"""

# Every adjustment of a request, one statement. The rows are locked already; the WHERE
# holds the same rules the checks did (bounds as product's CHECK and validation.MAX_STOCK;
# a test checks they agree), so a row failing them is a bug, not a refusal.
ADJUST = f"""
WITH item AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
        AS i(sku, delta, reason, reference, expected_version)
), adjusted AS (
    UPDATE product p SET quantity = p.quantity + i.delta
    FROM item i
    WHERE p.sku = i.sku AND p.quantity + i.delta BETWEEN p.reserved AND 1000000000
      AND (i.expected_version IS NULL OR p.version = i.expected_version)
    RETURNING p.id, i.delta, i.reason, i.reference, {_PRODUCT.replace("sku", "p.sku", 1)},
              greatest(pg_current_xact_id(), p.feed_key) AS feed_key
), movement AS (
    INSERT INTO stock_movement
        (product_id, kind, quantity_delta, reserved_delta, reason, reference, actor,
         feed_key, quantity_after, reserved_after, version_after)
    SELECT id, 'ADJUST', delta, 0, reason, reference, $6, feed_key, quantity, reserved, version
    FROM adjusted ORDER BY sku
)
SELECT {_PRODUCT} FROM adjusted ORDER BY sku
"""

# A warehouse count: the quantity set, its ledger row of kind SET carrying the delta
# (PostgreSQL 18's RETURNING old.*: the numbers before, under the same lock).
SET = f"""
WITH counted AS (
    UPDATE product p SET quantity = $2
    WHERE p.sku = $1 AND $2 BETWEEN p.reserved AND 1000000000
      AND ($3::bigint IS NULL OR p.version = $3)
    RETURNING p.id, new.quantity - old.quantity AS delta, {_PRODUCT.replace("sku", "p.sku", 1)},
              greatest(pg_current_xact_id(), p.feed_key) AS feed_key
), movement AS (
    INSERT INTO stock_movement
        (product_id, kind, quantity_delta, reserved_delta, reason, reference, actor,
         feed_key, quantity_after, reserved_after, version_after)
    SELECT id, 'SET', delta, 0, $4, $5, $6, feed_key, quantity, reserved, version FROM counted
)
SELECT {_PRODUCT} FROM counted
"""

# Takes the key, or waits for the transaction that holds it and then finds it taken.
CLAIM = """
INSERT INTO admin_write_key (actor, key, operation, fingerprint) VALUES ($1, $2, $3, $4)
ON CONFLICT (actor, key) DO NOTHING
RETURNING true
"""
STORED = "SELECT operation, fingerprint, answer FROM admin_write_key WHERE actor = $1 AND key = $2"
ANSWER = "UPDATE admin_write_key SET answer = $3::jsonb WHERE actor = $1 AND key = $2"
PRUNE = """
DELETE FROM admin_write_key WHERE (actor, key) IN (
    SELECT actor, key FROM admin_write_key
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at LIMIT $2)
"""

# What a keyed request may have answered, as stored.
Answer = (
    Product
    | AdjustedProducts
    | ProductNotFound
    | InvalidInput
    | VersionConflict
    | QuantityBelowReserved
)
_PROBLEMS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (ProductNotFound, InvalidInput, VersionConflict, QuantityBelowReserved)
}


def check_key(key: str | None) -> InvalidInput | None:
    if key is not None and (
        not 1 <= len(key) <= validation.MAX_IDEMPOTENCY_KEY or _has_control_characters(key)
    ):
        return InvalidInput(
            "idempotencyKey",
            f"must be 1 to {validation.MAX_IDEMPOTENCY_KEY} characters, no control codes",
        )
    return None


def _check_common(
    expected_version: int | None, reference: str | None, prefix: str
) -> InvalidInput | None:
    if expected_version is not None and expected_version < 1:
        return InvalidInput(f"{prefix}expectedVersion", "must be 1 or more (versions start at 1)")
    if reference is not None and (
        not reference.strip()
        or len(reference) > MAX_REFERENCE
        or _has_control_characters(reference)
    ):
        return InvalidInput(
            f"{prefix}reference", f"must be 1 to {MAX_REFERENCE} characters, not blank"
        )
    return None


def check_adjustments(
    adjustments: Sequence[StockAdjustment], key: str | None, *, single: bool
) -> InvalidInput | None:
    """adjustStock's input (single: its fields by their own names) or adjustStocks'."""
    if not single and not adjustments:
        return InvalidInput("adjustments", "must name at least one product")
    if len(adjustments) > MAX_ADJUSTMENTS:
        return InvalidInput("adjustments", f"at most {MAX_ADJUSTMENTS:,} products at once")
    seen: set[str] = set()
    for i, item in enumerate(adjustments):
        prefix = "" if single else f"adjustments[{i}]."
        if invalid := validation.check_adjustment(item.sku, item.delta, item.reason):
            return InvalidInput(f"{prefix}{invalid.field}", invalid.reason)
        if invalid := _check_common(item.expected_version, item.reference, prefix):
            return invalid
        if item.sku in seen:
            return InvalidInput(f"{prefix}sku", f"{item.sku} appears more than once")
        seen.add(item.sku)
    return check_key(key)


def check_set(
    sku: str,
    quantity: int,
    reason: str,
    expected_version: int | None,
    reference: str | None,
    key: str | None,
) -> InvalidInput | None:
    """setStock's input; below `reserved` is for the database to tell (under the lock)."""
    if invalid := validation.check_adjustment(sku, 1, reason):
        return invalid
    if not 0 <= quantity <= validation.MAX_STOCK:
        return InvalidInput("quantity", f"must be 0 to {validation.MAX_STOCK:,}")
    return _check_common(expected_version, reference, "") or check_key(key)


def _has_control_characters(text: str) -> bool:
    # As validation's: PostgreSQL text cannot hold NUL, and no reference needs control codes.
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


class AdminWrites:
    def __init__(
        self,
        pool: asyncpg.Pool,
        retention_seconds: float = KEY_RETENTION_SECONDS,
        prune_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
    ) -> None:
        self._pool = pool
        self._retention = retention_seconds
        self._prune_interval = prune_interval_seconds

    async def adjust(
        self, adjustment: StockAdjustment, key: str | None, actor: str | None
    ) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""

        async def work(conn: Connection) -> Answer:
            outcome = await _adjust(conn, [adjustment], actor, single=True)
            return outcome.products[0] if isinstance(outcome, AdjustedProducts) else outcome

        answer = await self._keyed(actor, key, "adjustStock", _arguments(adjustment), work)
        if isinstance(answer, AdjustedProducts):
            raise AssertionError("adjustStock answers one product")
        return answer

    async def set(
        self,
        sku: str,
        quantity: int,
        reason: str,
        expected_version: int | None,
        reference: str | None,
        key: str | None,
        actor: str | None,
    ) -> ProductOutcome:
        """Inputs are valid (the service checked them)."""

        async def work(conn: Connection) -> Answer:
            rows = await conn.fetch(LOCK, [sku])
            if not rows:
                return ProductNotFound(sku)
            product = Product.from_row(rows[0])
            if expected_version is not None and product.version != expected_version:
                return VersionConflict(sku, expected_version, product.version)
            if quantity < product.reserved:
                return QuantityBelowReserved(sku, quantity, product.reserved)
            row = await conn.fetchrow(
                SET, sku, quantity, expected_version, reason, reference, actor
            )
            if row is None:
                raise AssertionError(f"{sku} changed under its row lock")
            return (await _after(conn, [Product.from_row(row)]))[0]

        arguments = {
            "sku": sku,
            "quantity": quantity,
            "reason": reason,
            "expectedVersion": expected_version,
            "reference": reference,
        }
        answer = await self._keyed(actor, key, "setStock", arguments, work)
        if isinstance(answer, AdjustedProducts):
            raise AssertionError("setStock answers one product")
        return answer

    async def adjust_many(
        self, adjustments: Sequence[StockAdjustment], key: str | None, actor: str | None
    ) -> BulkAdjustOutcome:
        """Inputs are valid (the service checked them: 1 to MAX_ADJUSTMENTS, skus unique)."""

        async def work(conn: Connection) -> Answer:
            return await _adjust(conn, adjustments, actor, single=False)

        arguments = [_arguments(a) for a in adjustments]
        answer = await self._keyed(actor, key, "adjustStocks", arguments, work)
        if isinstance(answer, Product | QuantityBelowReserved):
            raise AssertionError("adjustStocks answers its products, or a problem")
        return answer

    async def _keyed(
        self,
        actor: str | None,
        key: str | None,
        operation: str,
        arguments: object,
        work: Callable[[Connection], Awaitable[Answer]],
    ) -> Answer | IdempotencyKeyReused:
        """`work` in a transaction; with a key, once per key (see the module's doc)."""
        fingerprint = hashlib.sha256(
            json.dumps([operation, arguments], sort_keys=True, separators=(",", ":")).encode()
        ).digest()
        # A key needs a name to belong to; the service always passes the caller's.
        owner = actor or "admin"

        async def unit(conn: Connection) -> Answer | IdempotencyKeyReused:
            if key is not None:
                # Twice at most: a key pruned between the two statements is free again.
                for _ in range(2):
                    if await conn.fetchval(CLAIM, owner, key, operation, fingerprint):
                        break
                    stored = await conn.fetchrow(STORED, owner, key)
                    if stored is None:
                        continue
                    if bytes(stored["fingerprint"]) != fingerprint:
                        used_for = f"{stored['operation']} with other arguments"
                        return IdempotencyKeyReused(key, used_for)
                    return _decode(json.loads(stored["answer"]))
                else:
                    raise AssertionError("an idempotency key neither taken nor stored")
            outcome = await work(conn)
            if key is not None:
                await conn.execute(ANSWER, owner, key, json.dumps(_encode(outcome)))
            return outcome

        return await in_transaction(self._pool, unit)

    # Keys past their retention

    async def prune_once(self) -> int:
        """Delete the keys past their retention, in bounded batches; how many."""
        pruned = 0
        while True:
            status = await self._pool.execute(PRUNE, self._retention, PRUNE_BATCH)
            count = int(status.split()[-1])
            pruned += count
            if count < PRUNE_BATCH:
                return pruned

    async def run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception:  # a database outage must not end pruning for good
                log.exception("pruning admin idempotency keys failed; retrying")
            await asyncio.sleep(self._prune_interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AdminWrites]:
        async with background(self.run(), "admin-key-pruner"):
            yield self


async def _adjust(
    conn: Connection, adjustments: Sequence[StockAdjustment], actor: str | None, *, single: bool
) -> AdjustedProducts | ProductNotFound | InvalidInput | VersionConflict:
    """Apply every adjustment or none; the first one refused (in the given order) is named."""
    rows = await conn.fetch(LOCK, [a.sku for a in adjustments])
    locked = {row["sku"]: Product.from_row(row) for row in rows}
    for i, item in enumerate(adjustments):
        product = locked.get(item.sku)
        if product is None:
            return ProductNotFound(item.sku)
        if item.expected_version is not None and product.version != item.expected_version:
            return VersionConflict(item.sku, item.expected_version, product.version)
        # adjustStock's words as they always were; adjustStocks' name the sku too.
        field, which = ("delta", "") if single else (f"adjustments[{i}].delta", f"{item.sku}: ")
        after = product.quantity + item.delta
        if after < product.reserved:
            return InvalidInput(
                field, f"{which}would leave quantity {after} below the {product.reserved} reserved"
            )
        if after > validation.MAX_STOCK:
            return InvalidInput(field, f"{which}would take quantity above {validation.MAX_STOCK:,}")
    adjusted = await conn.fetch(
        ADJUST,
        [a.sku for a in adjustments],
        [a.delta for a in adjustments],
        [a.reason for a in adjustments],
        [a.reference for a in adjustments],
        [a.expected_version for a in adjustments],
        actor,
    )
    if len(adjusted) != len(adjustments):
        raise AssertionError("a product changed under its row lock")
    return AdjustedProducts(tuple(await _after(conn, [Product.from_row(r) for r in adjusted])))


async def _after(conn: Connection, products: list[Product]) -> list[Product]:
    """The products as the transaction leaves them: a restock of a product with a waiting
    list offered holds in its statement's trigger, after the statement's own rows."""
    if not any(p.waiting for p in products):
        return products
    rows = await conn.fetch(LOCK, [p.sku for p in products])
    return [Product.from_row(r) for r in rows]


def _arguments(adjustment: StockAdjustment) -> dict[str, object]:
    return {
        "sku": adjustment.sku,
        "delta": adjustment.delta,
        "reason": adjustment.reason,
        "expectedVersion": adjustment.expected_version,
        "reference": adjustment.reference,
    }


def _product(product: Product) -> dict[str, object]:
    fields = dataclasses.asdict(product)
    fields["updated_at"] = product.updated_at.isoformat()
    return fields


def _encode(answer: Answer) -> dict[str, object]:
    match answer:
        case Product():
            return {"type": "Product", "product": _product(answer)}
        case AdjustedProducts():
            return {"type": "AdjustedProducts", "products": [_product(p) for p in answer.products]}
        case _:
            return {"type": type(answer).__name__, "fields": dataclasses.asdict(answer)}


def _decode(stored: dict[str, Any]) -> Answer:
    def product(fields: dict[str, Any]) -> Product:
        return Product(**{**fields, "updated_at": datetime.fromisoformat(fields["updated_at"])})

    if stored["type"] == "Product":
        return product(stored["product"])
    if stored["type"] == "AdjustedProducts":
        return AdjustedProducts(tuple(product(p) for p in stored["products"]))
    problem: Answer = _PROBLEMS[stored["type"]](**stored["fields"])
    return problem
