"""Webhook endpoints in PostgreSQL (migration 010): creating, deleting and listing them.
Delivery state is written by delivery.py alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from inventory_graphql.inventory.stock_events import Cursor
from inventory_graphql.webhooks import signing

# Creations take turns, so that the endpoint limit holds under concurrent admins.
LOCK_CREATE = "SELECT pg_advisory_xact_lock(hashtext('inventory.webhook.create'), 0)"

# A new endpoint starts at the feed's current end: every event it will get is final after
# its creation's snapshot was taken (every earlier final event is below that xmin).
CREATE = """
INSERT INTO webhook_endpoint (url, kinds, secret, created_by, feed_key, event_id)
SELECT $1, $2::text[]::stock_event_kind[], $3, $4, pg_snapshot_xmin(pg_current_snapshot()), 0
WHERE (SELECT count(*) FROM webhook_endpoint) < $5
RETURNING id
"""

DELETE = "DELETE FROM webhook_endpoint WHERE id = $1 RETURNING id"

# Endpoints with their delivery state, and how many events of their kinds wait (counted
# up to LAG_COUNTED, so listing a far-behind endpoint stays cheap).
LAG_COUNTED = 1000
LIST = """
SELECT w.id, w.url, w.kinds::text[] AS kinds, w.status::text AS status, w.created_at,
       w.created_by, w.feed_key, w.event_id, w.first_key, w.first_id, w.last_key, w.last_id,
       w.message_events, w.attempts, w.first_failure_at, w.next_attempt_at,
       w.last_success_at, w.disabled_reason, w.delivered_events,
       (SELECT count(*) FROM (
            SELECT 1 FROM stock_event e
            WHERE (e.feed_key, e.id) > (w.feed_key, w.event_id)
              AND e.feed_key < pg_snapshot_xmin(pg_current_snapshot())
              AND (w.kinds IS NULL OR e.kind = ANY (w.kinds))
            LIMIT $2) AS waiting) AS lag
FROM webhook_endpoint w
WHERE $1::int IS NULL OR w.id = $1
ORDER BY w.id
"""

# Their last failures (migration 010 keeps 20 each), newest first.
FAILURES = """
SELECT endpoint_id, at, webhook_id, attempt, status_code, error FROM webhook_failure
WHERE $1::int IS NULL OR endpoint_id = $1
ORDER BY endpoint_id, seq DESC
"""


@dataclass(frozen=True)
class Failure:
    at: datetime
    webhook_id: str
    attempt: int
    status_code: int | None  # None: no answer (connection refused, timeout...)
    error: str


@dataclass(frozen=True)
class Endpoint:
    id: int
    url: str
    kinds: tuple[str, ...] | None  # None: every kind
    status: str  # ACTIVE, FAILING, DISABLED
    created_at: datetime
    created_by: str | None
    cursor: Cursor  # the last event delivered
    message_id: str | None  # the webhook-id being delivered
    message_events: int | None
    attempts: int
    first_failure_at: datetime | None
    next_attempt_at: datetime | None
    last_success_at: datetime | None
    disabled_reason: str | None
    delivered_events: int
    lag: int  # events of its kinds after its cursor, counted up to LAG_COUNTED
    failures: tuple[Failure, ...]  # the last ones, newest first

    @classmethod
    def from_row(cls, row: Any, failures: Sequence[Any] = ()) -> Endpoint:
        message = None
        if row["first_key"] is not None:
            first = Cursor(row["first_key"], row["first_id"])
            last = Cursor(row["last_key"], row["last_id"])
            message = signing.message_id(row["id"], str(first), str(last))
        return cls(
            id=row["id"],
            url=row["url"],
            kinds=None if row["kinds"] is None else tuple(row["kinds"]),
            status=row["status"],
            created_at=row["created_at"],
            created_by=row["created_by"],
            cursor=Cursor(row["feed_key"], row["event_id"]),
            message_id=message,
            message_events=row["message_events"],
            attempts=row["attempts"],
            first_failure_at=row["first_failure_at"],
            next_attempt_at=row["next_attempt_at"],
            last_success_at=row["last_success_at"],
            disabled_reason=row["disabled_reason"],
            delivered_events=row["delivered_events"],
            lag=row["lag"],
            failures=tuple(
                Failure(f["at"], f["webhook_id"], f["attempt"], f["status_code"], f["error"])
                for f in failures
            ),
        )


async def create(
    pool: asyncpg.Pool,
    url: str,
    kinds: Sequence[str] | None,
    created_by: str | None,
    max_endpoints: int,
) -> tuple[Endpoint, bytes] | None:
    """A new endpoint and its secret; None when max_endpoints exist already."""
    secret = signing.new_secret()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(LOCK_CREATE)
        id_ = await conn.fetchval(
            CREATE, url, None if kinds is None else list(kinds), secret, created_by, max_endpoints
        )
        if id_ is None:
            return None
        row = await conn.fetchrow(LIST, id_, LAG_COUNTED)
    return Endpoint.from_row(row), secret


async def delete(pool: asyncpg.Pool, id_: int) -> Endpoint | None:
    """The endpoint as it was before it was deleted; None when there is none."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(LIST, id_, LAG_COUNTED)
        failures = await conn.fetch(FAILURES, id_)
        if row is None or await conn.fetchval(DELETE, id_) is None:
            return None
    return Endpoint.from_row(row, failures)


async def endpoints(pool: asyncpg.Pool, id_: int | None = None) -> list[Endpoint]:
    """Every endpoint (or the one with this id), oldest first."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        rows = await conn.fetch(LIST, id_, LAG_COUNTED)
        failures = await conn.fetch(FAILURES, id_)
    by_endpoint: dict[int, list[Any]] = {}
    for f in failures:
        by_endpoint.setdefault(f["endpoint_id"], []).append(f)
    return [Endpoint.from_row(r, by_endpoint.get(r["id"], ())) for r in rows]
