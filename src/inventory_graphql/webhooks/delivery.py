"""Delivering the stock event feed to webhook endpoints: at-least-once, in feed order per
endpoint, one process per endpoint at a time.

Each delivering process runs one WebhookWorker: `serve`'s delivery process (process.py),
or an app process delivering itself (app.py's lifespan). While no endpoint exists it
only asks the pool, every INVENTORY_WEBHOOK_POLL_SECONDS, whether one does. Then it opens
a connection of its own (not a pool connection) and takes a session advisory lock per
endpoint on it with pg_try_advisory_lock: the endpoints it gets are its own, one task
each. Every write of delivery state goes through that connection and checks the lock
(migration 010's webhook_lock_held), so a process that lost it (its connection broke, or
PostgreSQL restarted) can move nothing; PostgreSQL drops the lock with the session, and a
process killed with -9 gives its endpoints up at once. Another process takes them at its
next poll. When the connection fails the worker cancels every delivery first (requests in
flight included), then reconnects.

An endpoint's task: the message is fixed in the endpoint's row (first and last feed
cursor) before its first attempt, so retries and take-overs resend the same events under
the same webhook-id; a 2xx moves the endpoint's cursor to the message's last event, in one
guarded statement; any other answer (3xx included: redirects are not followed), a timeout
or a refused connection is a failure, logged on the endpoint and retried after an
exponential backoff with jitter, capped at INVENTORY_WEBHOOK_RETRY_MAX_SECONDS. A message
failing for longer than INVENTORY_WEBHOOK_MAX_AGE_SECONDS marks its endpoint FAILING; it
is still retried at the cap, so a receiver that comes back gets everything, in order, with
no operator step (and goes back to ACTIVE). 410 Gone disables the endpoint.

A slow endpoint costs its own task only: requests have connect, read and total timeouts,
and the worker's database work is a few short statements per message on its own
connection, never a pool connection that reserves wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import aiohttp
import asyncpg
import orjson

from inventory_graphql.config import Settings
from inventory_graphql.inventory.stock_events import Cursor
from inventory_graphql.webhooks import signing
from inventory_graphql.webhooks.destinations import CheckedResolver, url_refusal

log = logging.getLogger(__name__)
T = TypeVar("T")

# The feed's end is looked at this often while this process delivers to any endpoint: a
# new event reaches its endpoints within about this (one indexed read per process).
FEED_POLL_SECONDS = 0.25
# What is read of an answer: its status is what counts; a little of its body goes to the
# failure log.
MAX_RESPONSE_BYTES = 64 * 1024
ERROR_BODY_CHARS = 200
# Events scanned per read for an endpoint that takes only some kinds.
SCAN = 1000
# The first retry comes after about a second, then twice as long each time (with jitter).
FIRST_RETRY_SECONDS = 1.0
# Statements on the worker's connection: a database that does not answer in this is lost.
STATEMENT_SECONDS = 10.0
RECONNECT_SECONDS = 1.0
USER_AGENT = "inventory-graphql-webhooks"

DELIVERABLE = "SELECT id FROM webhook_endpoint WHERE status <> 'DISABLED' ORDER BY id"
ANY_DELIVERABLE = "SELECT EXISTS (SELECT 1 FROM webhook_endpoint WHERE status <> 'DISABLED')"
TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('inventory.webhook'), $1)"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('inventory.webhook'), $1)"
# The feed's last final event: whether there is anything new for anyone.
FEED_END = """
SELECT feed_key, id FROM stock_event
WHERE feed_key < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY feed_key DESC, id DESC LIMIT 1
"""
# What a delivery task knows of its endpoint: read at its start and after a failure;
# every other write answers it (RETURNING), so a message costs no read of it.
ENDPOINT_STATE = """
id, url, kinds::text[] AS kinds, secret, status::text AS status,
feed_key, event_id, first_key, first_id, last_key, last_id, message_events, attempts,
greatest(extract(epoch FROM next_attempt_at - now()), 0)::float8 AS wait
"""
ENDPOINT = f"SELECT {ENDPOINT_STATE} FROM webhook_endpoint WHERE id = $1"
# Retention's horizon beside what is read, in one snapshot: the pruner moves it in the
# transaction that deletes, so a read either has its events or sees the horizon past them.
HORIZON = "SELECT feed_key FROM stock_event_horizon"
HORIZON_ID = "SELECT id FROM stock_event_horizon"
# The feed's next events after a cursor: where they are and their kinds, to fix a message
# (no event: one row of NULLs, with the horizon).
NEXT_EVENTS = f"""
SELECT ({HORIZON}) AS horizon_key, ({HORIZON_ID}) AS horizon_id,
       e.feed_key, e.id, e.kind::text AS kind
FROM (SELECT 1) one
LEFT JOIN LATERAL stock_event_page($1::xid8, $2::bigint, $3::int) e ON true
ORDER BY e.feed_key, e.id
"""
# A message's events (all final: they were when it was fixed), in feed order, as the JSON
# array its body carries: built by PostgreSQL, so the server passes the bytes on without
# making an object per event (the GraphQL StockEvent's fields and formats; occurredAt as
# Python's isoformat writes it, as the API does: tests/webhooks/test_body.py). Also their
# count and the last one's time.
MESSAGE_EVENTS = f"""
WITH e AS (
    SELECT e.*, p.sku,
           to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN date_part('microseconds', e.occurred_at)::bigint % 1000000 = 0 THEN ''
                   ELSE to_char(e.occurred_at AT TIME ZONE 'UTC', '.US') END
           || '+00:00' AS at
    FROM stock_event e JOIN product p ON p.id = e.product_id
    WHERE (e.feed_key, e.id) > ($1::xid8, $2::bigint)
      AND (e.feed_key, e.id) <= ($3::xid8, $4::bigint)
      AND ($5::text[] IS NULL OR e.kind::text = ANY ($5))
    ORDER BY e.feed_key, e.id
    LIMIT $6
)
SELECT ({HORIZON}) AS horizon_key, ({HORIZON_ID}) AS horizon_id, count(*) AS events,
       (array_agg(e.at ORDER BY e.feed_key DESC, e.id DESC))[1] AS last_at,
       json_agg(json_build_object(
           'cursor', e.feed_key::text || '.' || e.id, 'kind', e.kind, 'sku', e.sku,
           'quantityDelta', e.quantity_delta, 'reservedDelta', e.reserved_delta,
           'quantity', e.quantity, 'reserved', e.reserved,
           'available', e.quantity - e.reserved, 'version', e.version,
           'reservationId', e.reservation_id, 'reason', e.reason, 'reference', e.reference,
           'actor', e.actor, 'occurredAt', e.at) ORDER BY e.feed_key, e.id)::text AS json
FROM e
"""
# The writes: each names the state it moves from and checks this session's lock.
FIX_MESSAGE = f"""
UPDATE webhook_endpoint
SET first_key = $4, first_id = $5, last_key = $6, last_id = $7, message_events = $8,
    attempts = 0, first_failure_at = NULL, next_attempt_at = NULL
WHERE id = $1 AND feed_key = $2 AND event_id = $3 AND first_key IS NULL
  AND status <> 'DISABLED' AND webhook_lock_held(id)
RETURNING {ENDPOINT_STATE}
"""
PASS_OVER = f"""
UPDATE webhook_endpoint SET feed_key = $4, event_id = $5
WHERE id = $1 AND feed_key = $2 AND event_id = $3 AND first_key IS NULL
  AND status <> 'DISABLED' AND webhook_lock_held(id)
RETURNING {ENDPOINT_STATE}
"""
DELIVERED = f"""
UPDATE webhook_endpoint
SET feed_key = last_key, event_id = last_id,
    first_key = NULL, first_id = NULL, last_key = NULL, last_id = NULL, message_events = NULL,
    delivered_events = delivered_events + message_events,
    attempts = 0, first_failure_at = NULL, next_attempt_at = NULL, last_success_at = now(),
    status = 'ACTIVE'
WHERE id = $1 AND first_key = $2 AND first_id = $3 AND last_key = $4 AND last_id = $5
  AND status <> 'DISABLED' AND webhook_lock_held(id)
RETURNING {ENDPOINT_STATE}
"""
# A failed attempt: logged, the next one after $7 seconds; FAILING once the message's first
# failure is older than $8 seconds (SET reads the row as it was).
FAILED = """
WITH failed AS (
    UPDATE webhook_endpoint
    SET attempts = attempts + 1,
        first_failure_at = coalesce(first_failure_at, now()),
        next_attempt_at = now() + make_interval(secs => $7),
        status = CASE WHEN first_failure_at < now() - make_interval(secs => $8)
                      THEN 'FAILING' ELSE status END
    WHERE id = $1 AND first_key = $2 AND first_id = $3 AND last_key = $4 AND last_id = $5
      AND status <> 'DISABLED' AND webhook_lock_held(id)
    RETURNING id, attempts
)
INSERT INTO webhook_failure (endpoint_id, webhook_id, attempt, status_code, error)
SELECT id, $6, attempts, $9, $10 FROM failed
RETURNING endpoint_id
"""
DISABLE = """
WITH disabled AS (
    UPDATE webhook_endpoint
    SET status = 'DISABLED', disabled_at = now(), disabled_reason = $2,
        attempts = CASE WHEN first_key IS NULL THEN 0 ELSE attempts + 1 END,
        first_failure_at = CASE WHEN first_key IS NULL THEN NULL
                                ELSE coalesce(first_failure_at, now()) END,
        next_attempt_at = NULL
    WHERE id = $1 AND status <> 'DISABLED' AND webhook_lock_held(id)
    RETURNING id, greatest(attempts, 1) AS attempt
)
INSERT INTO webhook_failure (endpoint_id, webhook_id, attempt, status_code, error)
SELECT id, $3, attempt, $4, $2 FROM disabled
RETURNING endpoint_id
"""


class ConnectionLost(Exception):
    """The worker's own connection failed: its locks may be gone."""


class Moved(Exception):
    """An endpoint's delivery state is not what this task last read (deleted, disabled):
    the task ends, and the next poll decides whether to start it again."""


@dataclass(frozen=True)
class Message:
    endpoint: int
    after: Cursor  # the endpoint's cursor: the message holds its kinds in (after, last]
    first: Cursor
    last: Cursor
    events: int

    @property
    def id(self) -> str:
        return signing.message_id(self.endpoint, str(self.first), str(self.last))


@dataclass(frozen=True)
class Attempt:
    """What an attempt got: a status (None: no answer) and what went wrong, if anything."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


def body(events_json: str, last_at: str) -> bytes:
    """A message's JSON body: the events (a JSON array, MESSAGE_EVENTS') in feed order,
    the last one's time."""
    return b"".join(
        (
            b'{"type":"stock.events","timestamp":',
            orjson.dumps(last_at),
            b',"data":{"events":',
            events_json.encode(),
            b"}}",
        )
    )


def backoff(attempt: int, cap: float) -> float:
    """Seconds before the retry after failed attempt number `attempt` (1 up): doubling
    from a second, capped, and spread over its upper half so retries do not align."""
    ceiling = min(cap, FIRST_RETRY_SECONDS * 2 ** min(attempt - 1, 40))
    return float(ceiling * random.uniform(0.5, 1.0))


class WebhookWorker:
    def __init__(self, database_url: str, pool: asyncpg.Pool, settings: Settings) -> None:
        self._url = database_url
        self._pool = pool
        self._settings = settings
        self._conn: asyncpg.Connection | None = None
        self._conn_turn = asyncio.Lock()  # one statement at a time on the connection
        self._lost = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._feed_end: Cursor | None = None
        self._feed_moved = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    @property
    def endpoints(self) -> int:
        """Endpoints this process delivers to now."""
        return len(self._tasks)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(
            total=self._settings.webhook_timeout_seconds,
            sock_connect=self._settings.webhook_connect_timeout_seconds,
            sock_read=self._settings.webhook_read_timeout_seconds,
        )
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._settings.webhook_allowed_hosts),
            limit=self._settings.webhook_max_endpoints,
            use_dns_cache=False,  # every connection resolves, and checks, afresh
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"user-agent": USER_AGENT},
            trust_env=False,  # no proxy from the environment: the checked address is used
        ) as http:
            self._http = http
            task = asyncio.create_task(self._run(), name="webhook-worker")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self) -> None:
        while True:
            try:
                if await self._any_deliverable():
                    await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("webhook delivery stopped, resuming: %r", error)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            await asyncio.sleep(self._settings.webhook_poll_seconds)

    async def _any_deliverable(self) -> bool:
        try:
            return bool(await self._pool.fetchval(ANY_DELIVERABLE))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.debug("webhooks: cannot look for endpoints: %r", error)
            return False

    async def _serve(self) -> None:
        """Deliver to every endpoint this process can lock, until none is left or the
        connection fails; every delivery ends before this returns."""
        settings = self._settings
        self._lost.clear()
        conn = await asyncpg.connect(
            self._url,
            timeout=5,
            server_settings={
                # Which process delivers, for operators (pg_stat_activity) and tests.
                "application_name": f"inventory-graphql webhooks {os.getpid()}",
                "lock_timeout": str(settings.lock_timeout_ms),
                "statement_timeout": str(settings.statement_timeout_ms),
            },
        )
        conn.add_termination_listener(lambda _: self._lost.set())
        self._conn = conn
        try:
            while not self._lost.is_set():
                if await self._take_endpoints():
                    await self._watch_feed(settings.webhook_poll_seconds)
                elif await self._db(lambda c: c.fetchval(ANY_DELIVERABLE)):
                    # Every endpoint is another process's: wait to take over from it.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(settings.webhook_poll_seconds):
                            await self._lost.wait()
                else:
                    return  # nothing to deliver to: back to asking the pool now and then
        finally:
            # Deliveries stop before anything else: whatever they would write next could
            # no longer be guarded by this connection's locks.
            await self._stop_all()
            self._conn = None
            conn.terminate()

    async def _take_endpoints(self) -> set[int]:
        deliverable = {r["id"] for r in await self._db(lambda c: c.fetch(DELIVERABLE))}
        for id_, task in list(self._tasks.items()):
            if id_ not in deliverable or task.done():
                await self._stop(id_)
        for id_ in sorted(deliverable - self._tasks.keys()):
            if await self._fetchval(TRY_LOCK, id_):
                self._tasks[id_] = asyncio.create_task(self._deliver(id_), name=f"webhook-{id_}")
        return set(self._tasks)

    async def _watch_feed(self, seconds: float) -> None:
        """Wake the deliveries whenever the feed's end moves, for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._lost.is_set():
            row = await self._db(lambda c: c.fetchrow(FEED_END))
            end = None if row is None else Cursor(row["feed_key"], row["id"])
            if end != self._feed_end:
                self._feed_end = end
                moved, self._feed_moved = self._feed_moved, asyncio.Event()
                moved.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FEED_POLL_SECONDS):
                    await self._lost.wait()

    async def _stop(self, id_: int) -> None:
        task = self._tasks.pop(id_)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not task.cancelled() and (error := task.exception()) is not None:
            if isinstance(error, ConnectionLost):
                self._lost.set()
            else:
                log.error("webhook %s: delivery failed", id_, exc_info=error)
        if not self._lost.is_set():
            await self._db(lambda c: c.fetchval(UNLOCK, id_))

    async def _stop_all(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _db(self, statement: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `statement` on the worker's connection; any failure of it is ConnectionLost
        (a lock may have gone with it)."""
        conn = self._conn
        if conn is None or self._lost.is_set():
            raise ConnectionLost("the webhook connection is gone")
        try:
            async with self._conn_turn, asyncio.timeout(STATEMENT_SECONDS):
                return await statement(conn)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as error:
            self._lost.set()
            raise ConnectionLost(repr(error)) from error
        except TimeoutError as error:
            self._lost.set()
            raise ConnectionLost("the database did not answer") from error

    # One endpoint's delivery.

    async def _deliver(self, id_: int) -> None:
        with contextlib.suppress(Moved):
            await self._deliver_until_moved(id_)

    async def _deliver_until_moved(self, id_: int) -> None:
        row = await self._fetchrow(ENDPOINT, id_)
        while True:
            if row is None or row["status"] == "DISABLED":
                return
            kinds: list[str] | None = row["kinds"]
            after = Cursor(row["feed_key"], row["event_id"])
            if row["first_key"] is None:
                moved = self._feed_moved
                fixed = await self._next_message(id_, after, kinds)
                if fixed is None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._settings.webhook_poll_seconds):
                            await moved.wait()
                else:
                    row = fixed
                continue
            message = Message(
                id_,
                after,
                Cursor(row["first_key"], row["first_id"]),
                Cursor(row["last_key"], row["last_id"]),
                row["message_events"],
            )
            events = await self._fetchrow(
                MESSAGE_EVENTS,
                *_key(after),
                *_key(message.last),
                kinds,
                message.events + 1,
            )
            if events["events"] != message.events or after < _horizon(events):
                # Retention passed the message's events before it was delivered (the
                # horizon moved past them; their ledger rows stay, their crossings go).
                await self._disable(
                    message, f"events of message {message.id} were pruned before delivery"
                )
            if row["wait"] > 0:
                await asyncio.sleep(row["wait"])
            moved = self._feed_moved
            payload = body(events["json"], events["last_at"])
            attempt = await self._send(row["url"], row["secret"], message, payload)
            row = await self._record(message, row["attempts"], attempt)
            if attempt.delivered and message.events < self._settings.webhook_batch_size:
                # The feed had no full batch: the next message waits for the feed's end to
                # be seen moving (a look every FEED_POLL_SECONDS; at once if a look while
                # this one was out saw it move), instead of carrying the few events that
                # came meanwhile. Under load that makes
                # full messages (measured: 13 events a message at 800 events/s cost the
                # server 21% of a core); idle, an event still leaves within about
                # FEED_POLL_SECONDS.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.webhook_poll_seconds):
                        await moved.wait()

    async def _next_message(self, id_: int, after: Cursor, kinds: list[str] | None) -> Any:
        """Fix the endpoint's next message, or pass over events not of its kinds: the
        endpoint's state then. None when the feed has nothing after `after`."""
        batch = self._settings.webhook_batch_size
        rows = await self._fetch(NEXT_EVENTS, *_key(after), batch if kinds is None else SCAN)
        if after < _horizon(rows[0]):
            await self._disable(
                Message(id_, after, after, after, 0),
                f"the feed's retention pruned events after {after} before they were delivered",
            )
        page = [(Cursor(r["feed_key"], r["id"]), r["kind"]) for r in rows if r["id"] is not None]
        if not page:
            return None
        chosen = [cursor for cursor, kind in page if kinds is None or kind in kinds][:batch]
        if not chosen:
            last = page[-1][0]
            return await self._write(PASS_OVER, id_, *_key(after), *_key(last))
        # With every event read taken, the message ends at the last one read; past a full
        # batch, at the batch's last.
        last = page[-1][0] if len(chosen) < batch else chosen[-1]
        return await self._write(
            FIX_MESSAGE, id_, *_key(after), *_key(chosen[0]), *_key(last), len(chosen)
        )

    async def _send(self, url: str, secret: bytes, message: Message, payload: bytes) -> Attempt:
        if (refused := url_refusal(url, self._settings.webhook_allowed_hosts)) is not None:
            return Attempt(None, f"destination not allowed: {refused}")
        assert self._http is not None
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature(secret, message.id, timestamp, payload),
        }
        try:
            async with self._http.post(
                url, data=payload, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.content.read(MAX_RESPONSE_BYTES)
                status = response.status
        except TimeoutError:
            return Attempt(None, "timed out")
        except aiohttp.ClientError as error:
            return Attempt(None, str(error) or type(error).__name__)
        if 200 <= status < 300:
            return Attempt(status, None)
        text = answer[:ERROR_BODY_CHARS].decode(errors="replace").strip()
        reason = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        return Attempt(status, f"{reason}: {text}" if text else reason)

    async def _record(self, message: Message, attempts: int, attempt: Attempt) -> Any:
        """The attempt's outcome, written; the endpoint's state after it."""
        cursors = (*_key(message.first), *_key(message.last))
        if attempt.delivered:
            return await self._write(DELIVERED, message.endpoint, *cursors)
        error = (attempt.error or "failed")[:500]
        if attempt.status == 410:
            await self._disable(message, "the endpoint answered 410 Gone", status=410)
        delay = backoff(attempts + 1, self._settings.webhook_retry_max_seconds)
        max_age = self._settings.webhook_max_age_seconds
        await self._write(
            FAILED, message.endpoint, *cursors, message.id, delay, max_age, attempt.status, error
        )
        log.info("webhook %s: %s failed (%s)", message.endpoint, message.id, error)
        return await self._fetchrow(ENDPOINT, message.endpoint)

    async def _disable(
        self, message: Message, reason: str, *, status: int | None = None
    ) -> NoReturn:
        """Disable the endpoint; its delivery ends (Moved)."""
        log.warning("webhook %s disabled: %s", message.endpoint, reason)
        await self._write(DISABLE, message.endpoint, reason, message.id, status)
        raise Moved("disabled")

    async def _fetch(self, statement: str, *args: object) -> list[Any]:
        return await self._db(lambda c: c.fetch(statement, *args))

    async def _fetchrow(self, statement: str, *args: object) -> Any:
        return await self._db(lambda c: c.fetchrow(statement, *args))

    async def _fetchval(self, statement: str, *args: object) -> Any:
        return await self._db(lambda c: c.fetchval(statement, *args))

    async def _write(self, statement: str, *args: object) -> Any:
        """One guarded write of delivery state: what it returned; Moved when it matched
        no row."""
        if (row := await self._fetchrow(statement, *args)) is None:
            raise Moved(statement.split("\n", 2)[1])
        return row


def _key(cursor: Cursor) -> tuple[int, int]:
    return cursor.feed_key, cursor.id


def _horizon(row: Any) -> Cursor:
    """The horizon a read carried (NEXT_EVENTS, MESSAGE_EVENTS)."""
    return Cursor(row["horizon_key"], row["horizon_id"])
