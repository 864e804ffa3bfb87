"""Told equals held: under load and faults, every client is told exactly what the database
holds. Real server processes on both reserve paths (coalesced and per-request, side by
side), aiohttp clients and a real PostgreSQL; `tests/support/oracle.py` records every
answer and checks it against the database at the end."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import psutil

from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import CREATE_PRODUCT
from tests.support.database import check, new_sku, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV
from tests.support.oracle import Answer, Line, Oracle, Verdict, post

PATHS = ("on", "off")  # INVENTORY_COALESCE_RESERVATIONS: coalesced, per-request
APPLICATION_NAME = "inventory-graphql"  # the service's pool connections, in pg_stat_activity

# Long enough for thousands of reserves and releases per path, and for the few shoppers
# who keep a hold past its 1 s ttl to do so dozens of times.
MIXED_LOAD_SECONDS = 10.0
MIXED_CLIENTS = 48
STORM_SECONDS = 8.0  # 80 rounds of killing every pool connection
STORM_EVERY_SECONDS = 0.1
STORM_CLIENTS = 24
# 5.5x the request deadline: long enough to show who stalls, and for each shopper of the
# locked product to be answered BUSY three times before the lock ends.
LOCK_SECONDS = 11.0
LOCKED_REQUEST_TIMEOUT_SECONDS = 2  # INVENTORY_REQUEST_TIMEOUT_SECONDS of test (c)'s servers
STEADY_CLIENTS = 16
STALL_SECONDS = 10.0
ABANDONING_CLIENTS = 2000
ABANDON_AFTER_SECONDS = 3.0
# Each waiting request costs the server memory while it waits (40-50 KiB measured: uvicorn,
# Starlette and Strawberry objects): 2,000 of them grow RSS by 75-100 MiB, before and after
# the rewrite. Bounded: at most ~75 KiB per waiting request.
RSS_GROWTH_LIMIT = 150 * 2**20

# Clients give up on a request after this long: far beyond what the contract allows
# (request timeout plus lock timeout), so only a hang reaches it.
CLIENT_TIMEOUT = 15.0


# -- helpers --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def within(seconds: float, what: str) -> AsyncIterator[None]:
    """Bound a whole test: a hang fails it with a message instead of stalling the suite."""
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if deadline.expired():
            raise AssertionError(f"{what} did not finish within {seconds} s") from None
        raise


@contextlib.asynccontextmanager
async def servers(
    database_url: str, tmp_path, env: dict[str, str] | None = None, paths: Sequence[str] = PATHS
) -> AsyncIterator[dict[str, ServerProcess]]:
    """One server process per reserve path, all on `database_url`, started together."""
    started: dict[str, ServerProcess] = {}
    try:
        for path in paths:
            started[path] = ServerProcess(
                {
                    "DATABASE_URL": database_url,
                    **SERVER_ENV,
                    "INVENTORY_COALESCE_RESERVATIONS": path,
                    **(env or {}),
                },
                log=tmp_path / f"server-coalesce-{path}.log",
            )
        await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in started.values()))
        yield started
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in started.values()))


def client_session(limit: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT),
    )


async def create_product(session: aiohttp.ClientSession, url: str, quantity: int) -> str:
    sku = new_sku("TVH")
    answer = await post(
        session,
        url,
        CREATE_PRODUCT,
        {"sku": sku, "name": "told vs held", "quantity": quantity},
        timeout=10,
        headers=ADMIN,
    )
    member = answer.payload("createProduct")
    assert member is not None and member["__typename"] == "Product", answer
    return sku


async def serves_again(
    session: aiohttp.ClientSession, url: str, sku: str, oracle: Oracle, seconds: float = 10
) -> str | None:
    """Within `seconds`, a reserve of `sku` is held (then released) and /readyz is 200.
    None when it is; else what was seen last."""
    deadline = time.monotonic() + seconds
    last = "nothing"
    while time.monotonic() < deadline:
        answer, rid = await oracle.reserve(session, url, [(sku, 1)], timeout=5)
        if rid is not None:
            await oracle.release(session, url, rid, timeout=5)
            break
        last = f"reserve answered {answer.label('reserve')}: {answer.body!r:.300}"
        await asyncio.sleep(0.2)
    else:
        return last
    while time.monotonic() < deadline:
        status = await ready_status(session, url)
        if status == "200":
            return None
        last = f"/readyz {status}"
        await asyncio.sleep(0.2)
    return last


async def ready_status(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return "200" if r.status == 200 else f"{r.status} {(await r.text())[:200]}"
    except (TimeoutError, aiohttp.ClientError) as error:
        return f"no answer ({type(error).__name__})"


async def poll_ready(
    session: aiohttp.ClientSession, url: str, until: float, started: float
) -> list[str]:
    """Poll /readyz every 0.25 s until `until`; every answer that was not a 200."""
    bad = []
    while time.monotonic() < until:
        asked = time.monotonic()
        status = await ready_status(session, url)
        if status != "200":
            bad.append(f"+{asked - started:.1f}s: {status}")
        await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - asked)))
    return bad


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1] if ordered else math.inf


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def expect(failures: list[str], condition: bool, message: str) -> None:
    if not condition:
        failures.append(message)


def expect_agrees(failures: list[str], server: ServerProcess, name: str, verdict: Verdict) -> None:
    """Zero orphans (reported as such), and no other disagreement."""
    if verdict.orphan_count:
        failures.append(
            f"{name}: {verdict.orphan_count} orphan hold(s) (log {server.log})\n{verdict}"
        )
    elif not verdict.ok:
        failures.append(f"{name}: told and held disagree (log {server.log})\n{verdict}")


def failed(failures: list[str]) -> str:
    return f"{len(failures)} failure(s):\n- " + "\n- ".join(failures)


# -- a. mixed load ------------------------------------------------------------------------


async def mixed_load(
    session: aiohttp.ClientSession, url: str, sku: str, oracle: Oracle, deadline: float
) -> None:
    """Shoppers reserve 1-4 units (some with a key) and release every hold they are told
    about, after a moment; a few keep theirs past its ttl, so the release finds it expired."""

    async def shopper(i: int) -> None:
        rng = random.Random(i)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            key = (
                f"mixed-{oracle.name}-{i}-{n}-{uuid.uuid4().hex[:8]}"
                if rng.random() < 0.25
                else None
            )
            slow = rng.random() < 0.03
            ttl = 1 if slow else rng.choice((None, 5, 60))
            lines = [(sku, rng.randint(1, 4))]
            answer, rid = await oracle.reserve(
                session, url, lines, ttl=ttl, key=key, timeout=CLIENT_TIMEOUT
            )
            if rid is not None:
                await asyncio.sleep(1.6 if slow else rng.uniform(0, 0.03))
                await oracle.release(session, url, rid, timeout=CLIENT_TIMEOUT)
            elif not answer.answered or answer.error:
                await asyncio.sleep(rng.uniform(0.02, 0.1))
            else:
                await asyncio.sleep(rng.uniform(0, 0.01))

    await asyncio.gather(*(shopper(i) for i in range(MIXED_CLIENTS)))


async def test_mixed_load_tells_every_client_exactly_what_is_held(own_database, own_db, tmp_path):
    """What a shopper relies on: "held" means held, whole; nothing is held for anyone who
    was not told so; a release gives the units back. 48 shoppers per path fight over a
    40-unit product for 10 s, releasing every hold they are told about."""
    failures: list[str] = []
    async with (
        within(MIXED_LOAD_SECONDS + 90, "the mixed-load test"),
        servers(own_database, tmp_path) as running,
        client_session() as session,
    ):
        oracles = {path: Oracle(path) for path in running}
        skus = {path: await create_product(session, s.url, 40) for path, s in running.items()}
        deadline = time.monotonic() + MIXED_LOAD_SECONDS
        await asyncio.gather(
            *(mixed_load(session, s.url, skus[p], oracles[p], deadline) for p, s in running.items())
        )
        for path, server in running.items():
            oracle, name = oracles[path], f"coalesce={path}"
            verdict = await oracle.verify(own_db, [skus[path]])
            expect_agrees(failures, server, name, verdict)
            expect(
                failures,
                oracle.count("no answer") == 0,
                f"{name}: {oracle.count('no answer')} requests got no answer within "
                f"{CLIENT_TIMEOUT} s ({dict(oracle.outcomes)}; log {server.log})",
            )
            expect(
                failures,
                not oracle.untyped_errors,
                f"{name}: errors that are not a typed retriable 503: "
                f"{dict(oracle.untyped_errors)} (log {server.log})",
            )
            expect(
                failures,
                oracle.count("held") >= 100,
                f"{name}: only {oracle.count('held')} holds in {MIXED_LOAD_SECONDS} s: "
                f"{dict(oracle.outcomes)}",
            )
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures)


# -- b. connection storm -----------------------------------------------------------------

# The service's pool connections in this test's database (the LISTEN connection has its
# own name and is left alone).
KILL_POOL = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE application_name = $1 AND datname = current_database() AND pid <> pg_backend_pid()
"""


async def storm(database_url: str, start: float, until: float) -> Counter[str]:
    """pg_terminate_backend on every pool connection of the service, every 100 ms."""
    kills: Counter[str] = Counter()
    conn = await asyncpg.connect(database_url, command_timeout=5)
    try:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < until:
            terminated = await conn.fetchval(KILL_POOL, APPLICATION_NAME)
            kills["ticks"] += 1
            kills["terminated"] += terminated
            kills["ticks that killed"] += terminated > 0
            await asyncio.sleep(STORM_EVERY_SECONDS)
    finally:
        await conn.close()
    return kills


async def storm_load(
    session: aiohttp.ClientSession, url: str, skus: list[str], oracle: Oracle, until: float
) -> None:
    """Single lines and carts, a third with a key; 70% of holds released at once."""

    async def shopper(i: int) -> None:
        rng = random.Random(1000 + i)
        n = 0
        while time.monotonic() < until:
            n += 1
            if rng.random() < 0.3:
                chosen = rng.sample(skus, rng.randint(2, len(skus)))
                lines: list[Line] = [(sku, rng.randint(1, 3)) for sku in chosen]
            else:
                lines = [(rng.choice(skus), rng.randint(1, 3))]
            key = (
                f"storm-{oracle.name}-{i}-{n}-{uuid.uuid4().hex[:8]}"
                if rng.random() < 0.34
                else None
            )
            answer, rid = await oracle.reserve(session, url, lines, key=key, timeout=CLIENT_TIMEOUT)
            if rid is not None and rng.random() < 0.7:
                await oracle.release(session, url, rid, timeout=CLIENT_TIMEOUT)
            if not answer.answered or answer.error:
                await asyncio.sleep(rng.uniform(0.01, 0.05))

    await asyncio.gather(*(shopper(i) for i in range(STORM_CLIENTS)))


async def test_connection_storm_never_leaves_an_untold_hold(own_database, own_db, tmp_path):
    """What a shopper relies on when the database connections keep breaking: an answer
    "held" means exactly one hold with the lines asked for; an error means nothing is held
    (or, for a request with an idempotency key, replaying the key finds the hold); and the
    service keeps serving once the storm passes. Every pool connection of the service is
    terminated every 100 ms for 8 s under load."""
    failures: list[str] = []
    async with (
        within(STORM_SECONDS + 90, "the connection-storm test"),
        servers(own_database, tmp_path) as running,
        client_session() as session,
    ):
        oracles = {path: Oracle(path) for path in running}
        skus = {
            path: [await create_product(session, s.url, 100_000) for _ in range(3)]
            for path, s in running.items()
        }
        start = time.monotonic() + 1  # a second of calm load first
        until = start + STORM_SECONDS
        loads = [storm_load(session, s.url, skus[p], oracles[p], until) for p, s in running.items()]
        kills, *_ = await asyncio.gather(storm(own_database, start, until), *loads)
        assert kills is not None  # storm()'s Counter; only the loads return None
        held_during = {path: oracle.count("held") for path, oracle in oracles.items()}

        expect(
            failures,
            kills["terminated"] > 0,
            f"the storm found no connection with application_name '{APPLICATION_NAME}' in "
            f"database {database_name(own_database)} in {kills['ticks']} tries: the service "
            "must name its pool connections so that operators (and this test) can find them",
        )
        for path, server in running.items():
            oracle, name = oracles[path], f"coalesce={path}"
            stuck = await serves_again(session, server.url, skus[path][0], oracle)
            expect(
                failures,
                stuck is None,
                f"{name}: not serving 10 s after the storm: {stuck} (log {server.log})",
            )
            if stuck is None:
                await oracle.replay_uncertain_keys(session, server.url, own_db)
            verdict = await oracle.verify(own_db, skus[path])
            expect_agrees(failures, server, name, verdict)
            expect(
                failures,
                not oracle.untyped_errors,
                f"{name}: while connections broke, every error must be the typed retriable 503 "
                f"(DATABASE_UNAVAILABLE or BUSY) that tells the client nothing was done; got "
                f"{dict(oracle.untyped_errors)} (log {server.log})",
            )
            expect(
                failures,
                held_during[path] >= 10,
                f"{name}: only {held_during[path]} holds during the storm: {dict(oracle.outcomes)}",
            )
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures) + f"\n(storm: {dict(kills)})"


# -- c. one product row locked -------------------------------------------------------------

OVERDUE = """
SELECT coalesce(max(extract(epoch FROM now() - r.expires_at)), 0)::float8
FROM reservation r
WHERE r.status = 'PENDING' AND r.expires_at < now()
  AND r.id IN (SELECT l.reservation_id FROM reservation_line l
               JOIN product p ON p.id = l.product_id WHERE p.sku = any($1::text[]))
"""


async def lock_rows(database_url: str, skus: list[str]) -> asyncpg.Connection:
    """Another client's transaction holding the products' rows (FOR UPDATE) until closed."""
    locker = await asyncpg.connect(database_url, command_timeout=10)
    await locker.execute("BEGIN")
    rows = await locker.fetch(
        "SELECT id FROM product WHERE sku = any($1::text[]) ORDER BY sku FOR UPDATE", skus
    )
    assert len(rows) == len(skus)
    return locker


async def unlock_rows(locker: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await locker.execute("ROLLBACK")
    await locker.close(timeout=5)


class Timed:
    """Answers with when they were asked and how long they took."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, Answer]] = []

    def asked_within(self, start: float, end: float) -> list[Answer]:
        return [a for asked, a in self.answers if start <= asked < end]


async def steady_load(
    session: aiohttp.ClientSession,
    url: str,
    skus: list[str],
    oracle: Oracle,
    until: float,
    timed: Timed,
) -> None:
    """Reserves of 1 unit with a 1-2 s ttl, half of them released, half left to expire."""

    async def shopper(i: int) -> None:
        rng = random.Random(2000 + i)
        while time.monotonic() < until:
            asked = time.monotonic()
            answer, rid = await oracle.reserve(
                session, url, [(rng.choice(skus), 1)], ttl=rng.randint(1, 2), timeout=10
            )
            timed.answers.append((asked, answer))
            if rid is not None and rng.random() < 0.5:
                await oracle.release(session, url, rid, timeout=10)
            await asyncio.sleep(rng.uniform(0.01, 0.03))

    await asyncio.gather(*(shopper(i) for i in range(STEADY_CLIENTS)))


async def locked_load(
    session: aiohttp.ClientSession, url: str, sku: str, oracle: Oracle, until: float, timed: Timed
) -> None:
    """Four shoppers who want the locked product, again and again."""

    async def shopper() -> None:
        while time.monotonic() < until:
            asked = time.monotonic()
            answer, _ = await oracle.reserve(
                session, url, [(sku, 1)], timeout=LOCKED_REQUEST_TIMEOUT_SECONDS + 3
            )
            timed.answers.append((asked, answer))
            await asyncio.sleep(0.2)

    await asyncio.gather(*(shopper() for _ in range(4)))


async def watch_expiry(db_url: str, skus: dict[str, list[str]], until: float) -> dict[str, float]:
    """How late, at worst, PENDING holds on these products were past their expiry."""
    worst = dict.fromkeys(skus, 0.0)
    conn = await asyncpg.connect(db_url, command_timeout=5)
    try:
        while time.monotonic() < until:
            for path, path_skus in skus.items():
                worst[path] = max(worst[path], await conn.fetchval(OVERDUE, path_skus))
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    return worst


async def test_a_locked_product_row_stalls_only_that_product(own_database, own_db, tmp_path):
    """What shoppers rely on when one product's row is stuck behind another transaction
    (a long admin script, a stuck job): everything else keeps selling at its usual speed,
    holds keep expiring on time, the service stays ready, and whoever wants the stuck
    product is told within the deadline, with a typed retriable BUSY, that nothing was
    held, instead of hanging. Once the row is free again, it sells again. One row per path
    is locked for 11 s while 16 shoppers per path buy other products."""
    failures: list[str] = []
    env = {"INVENTORY_REQUEST_TIMEOUT_SECONDS": str(LOCKED_REQUEST_TIMEOUT_SECONDS)}
    async with (
        within(LOCK_SECONDS + 90, "the locked-row test"),
        servers(own_database, tmp_path, env) as running,
        client_session() as session,
    ):
        oracles = {path: Oracle(path) for path in running}
        locked = {path: await create_product(session, s.url, 1000) for path, s in running.items()}
        others = {
            path: [await create_product(session, s.url, 1_000_000) for _ in range(4)]
            for path, s in running.items()
        }
        for path, server in running.items():  # holds of the locked product that expire while
            for _ in range(2):  # it is locked: the sweeper must not wait for them
                _, rid = await oracles[path].reserve(
                    session, server.url, [(locked[path], 2)], ttl=1
                )
                assert rid is not None, oracles[path].outcomes

        locker = await lock_rows(own_database, list(locked.values()))
        try:
            start = time.monotonic()
            end = start + LOCK_SECONDS
            steady = {path: Timed() for path in running}
            stalled = {path: Timed() for path in running}
            readiness = {
                path: asyncio.create_task(poll_ready(session, s.url, end, start))
                for path, s in running.items()
            }
            expiry = asyncio.create_task(watch_expiry(own_database, others, end))
            await asyncio.gather(
                *readiness.values(),
                expiry,
                *(
                    steady_load(session, s.url, others[p], oracles[p], end, steady[p])
                    for p, s in running.items()
                ),
                *(  # the last of these is answered, or given up on, before the lock ends
                    locked_load(session, s.url, locked[p], oracles[p], end - 5.5, stalled[p])
                    for p, s in running.items()
                ),
            )
            lateness = expiry.result()
        finally:
            await unlock_rows(locker)
        released = time.monotonic()

        for path, server in running.items():
            name = f"coalesce={path}"
            not_ready = readiness[path].result()
            expect(
                failures,
                not not_ready,
                f"{name}: /readyz not 200 {len(not_ready)} time(s) while one row was locked: "
                f"{not_ready[:5]} (log {server.log})",
            )

            answers = steady[path].asked_within(start, end)
            latencies = [a.seconds for a in answers]
            held = sum(a.label("reserve") == "held" for a in answers)
            expect(
                failures,
                p99(latencies) < 1.0,
                f"{name}: reserves of other products: p99 {p99(latencies):.2f} s over "
                f"{len(latencies)} requests while one row was locked (max "
                f"{max(latencies, default=0):.2f} s) (log {server.log})",
            )
            expect(
                failures,
                len(answers) >= 100 and held >= 0.99 * len(answers),
                f"{name}: reserves of other products while one row was locked: {held} held of "
                f"{len(answers)}: {dict(Counter(a.label('reserve') for a in answers))}",
            )
            expect(
                failures,
                lateness[path] < 2.5,
                f"{name}: holds of other products were PENDING up to {lateness[path]:.1f} s past "
                "their expiry while one row was locked (the sweeper must keep expiring them)",
            )

            tried = stalled[path].asked_within(start, end)
            wrong = [
                f"{a.label('reserve')} after {a.seconds:.1f} s"
                for a in tried
                if not (a.is_typed_busy() and a.seconds <= LOCKED_REQUEST_TIMEOUT_SECONDS + 1)
            ]
            expect(
                failures,
                len(tried) >= 8 and not wrong,
                f"{name}: reserves of the locked product must be answered 503 BUSY, retriable, "
                f"with Retry-After, within {LOCKED_REQUEST_TIMEOUT_SECONDS + 1} s; {len(wrong)} "
                f"of {len(tried)} were not: {Counter(wrong).most_common(5)}",
            )

        for path, server in running.items():  # the row is free: it sells again
            name = f"coalesce={path}"
            stuck = await serves_again(session, server.url, locked[path], oracles[path])
            expect(failures, stuck is None, f"{name}: the unlocked product does not sell: {stuck}")

        # The locked product's own holds expired during the lock: swept now it is free.
        everything = [sku for path in running for sku in (locked[path], *others[path])]
        while time.monotonic() - released < 5 and await own_db.fetchval(OVERDUE, everything):
            await asyncio.sleep(0.2)
        for path, server in running.items():
            verdict = await oracles[path].verify(own_db, [locked[path], *others[path]])
            expect_agrees(failures, server, f"coalesce={path}", verdict)
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures)


# -- d. abandonment -------------------------------------------------------------------------


def rss(server: ServerProcess) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


async def abandoning_clients(url: str, sku: str, oracle: Oracle) -> None:
    """2,000 shoppers who each give up after 3 s (aiohttp closes the connection)."""
    async with client_session() as session:

        async def shopper() -> None:
            await oracle.reserve(session, url, [(sku, 1)], timeout=ABANDON_AFTER_SECONDS)

        await asyncio.gather(*(shopper() for _ in range(ABANDONING_CLIENTS)))


async def test_clients_that_give_up_hold_nothing(own_database, own_db, tmp_path):
    """What the shoppers who are still there rely on: a shopper who gave up (closed the
    connection) before their hold was made holds nothing, so the stock goes to those who
    stay, and a crowd of waiting requests does not grow the server's memory without bound.
    2,000 shoppers per path ask for 1 unit of a 100-unit product whose row is locked for
    10 s and give up after 3 s. The servers wait for locks longer than the stall, so they do
    not answer first."""
    failures: list[str] = []
    env = {
        "INVENTORY_LOCK_TIMEOUT_MS": "60000",
        "INVENTORY_STATEMENT_TIMEOUT_MS": "60000",
        "INVENTORY_REQUEST_TIMEOUT_SECONDS": "60",
    }
    async with (
        within(STALL_SECONDS + 90, "the abandonment test"),
        servers(own_database, tmp_path, env) as running,
        client_session() as session,
    ):
        oracles = {path: Oracle(path) for path in running}
        skus = {path: await create_product(session, s.url, 100) for path, s in running.items()}
        before = {path: rss(s) for path, s in running.items()}
        samples: dict[str, list[tuple[float, int]]] = {path: [] for path in running}

        locker = await lock_rows(own_database, list(skus.values()))
        try:
            start = time.monotonic()
            crowds = [
                asyncio.create_task(abandoning_clients(s.url, skus[p], oracles[p]))
                for p, s in running.items()
            ]
            while time.monotonic() - start < STALL_SECONDS:
                for path, server in running.items():
                    samples[path].append((time.monotonic() - start, rss(server)))
                await asyncio.sleep(0.25)
        finally:
            await unlock_rows(locker)
        released = time.monotonic()
        await asyncio.gather(*crowds)

        # Let the servers finish whatever they still do; then nothing may have changed.
        last, steady_since = None, time.monotonic()
        while time.monotonic() - released < 8:
            now = [(await stock(own_db, sku))["reserved"] for sku in skus.values()]
            if now != last:
                last, steady_since = now, time.monotonic()
            elif time.monotonic() - steady_since >= 1.5 and time.monotonic() - released >= 2:
                break
            await asyncio.sleep(0.25)

        for path, server in running.items():
            oracle, name, sku = oracles[path], f"coalesce={path}", skus[path]
            reserved = (await stock(own_db, sku))["reserved"]
            told = oracle.told_holding_units(sku)
            expect(
                failures,
                reserved == told,
                f"{name}: {reserved} unit(s) held after {ABANDONING_CLIENTS} shoppers gave up, "
                f"{told} of them told to a client ({dict(oracle.outcomes)})",
            )
            growth = max(r for _, r in samples[path]) - before[path]
            expect(
                failures,
                growth < RSS_GROWTH_LIMIT,
                f"{name}: server RSS grew by {growth / 2**20:.0f} MiB during the stall, with "
                f"{ABANDONING_CLIENTS} requests waiting (limit {RSS_GROWTH_LIMIT / 2**20:.0f} MiB)",
            )
            answer, rid = await oracle.reserve(session, server.url, [(sku, 100)], timeout=10)
            expect(
                failures,
                rid is not None,
                f"{name}: a fresh reserve of all 100 units answered {answer.label('reserve')}: "
                f"{answer.body!r:.300}",
            )
            if rid is not None:
                await oracle.release(session, server.url, rid, timeout=10)
            verdict = await oracle.verify(own_db, [sku])
            expect_agrees(failures, server, name, verdict)
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures)
