"""Deadlines, backpressure and abandonment: a request the service cannot serve soon is
told so at once or within its deadline (HTTP 503 BUSY, retriable, Retry-After) and holds
nothing; a reserve whose client went away holds nothing. Real server processes on a
database of their own, both reserve paths side by side where the path matters; the
told-vs-held oracle (`tests/support/oracle.py`) checks what clients were told against
what the database holds."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from inventory_graphql.testing.graphql_ws import GraphQLWebSocket, Subscription
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.faults.test_told_vs_held import (
    client_session,
    create_product,
    expect,
    expect_agrees,
    failed,
    lock_rows,
    servers,
    serves_again,
    unlock_rows,
    within,
)
from tests.support.database import check, stock
from tests.support.oracle import Answer, Oracle

DEADLINE = 5.0  # INVENTORY_REQUEST_TIMEOUT_SECONDS, the service's default
# Clients give up after this long: far beyond what the contract allows (the deadline plus
# one lock timeout), so only a hang reaches it.
CLIENT_TIMEOUT = 15.0


def error_message(answer: Answer) -> str:
    return str((answer.error or {}).get("message", ""))


def answered_null(answer: Answer, field_name: str) -> bool:
    """`data.<field>` is null (or `data` itself is: the field is non-null in the schema)."""
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    return data is None or (isinstance(data, dict) and data.get(field_name) is None)


def is_busy_refusal(answer: Answer, field_name: str) -> bool:
    """The contract's BUSY: 503, code BUSY, retriable, Retry-After, and no result."""
    return answer.is_typed_busy() and answered_null(answer, field_name)


def log_trouble(log: Path | None) -> list[str]:
    """Lines of a server's log that speak of a failure: errors and tracebacks."""
    if log is None or not log.exists():
        return []
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line
    ]


def expect_quiet_logs(failures: list[str], running: dict[str, ServerProcess]) -> None:
    for path, server in running.items():
        trouble = log_trouble(server.log)
        expect(
            failures,
            not trouble,
            f"coalesce={path}: {len(trouble)} error line(s) in {server.log}: {trouble[:5]}",
        )


async def settled_reserved(
    db: asyncpg.Connection, expected: dict[str, int], seconds: float, steady: float = 1.0
) -> dict[str, int]:
    """Each sku's `reserved`, once it has equalled `expected` for `steady` seconds on end
    (a hold made for a client that left shows for a moment, until it is given back), or
    as last read when `seconds` pass."""
    deadline = time.monotonic() + seconds
    since = None
    while True:
        now = {sku: (await stock(db, sku))["reserved"] for sku in expected}
        if now != expected:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= steady:
            return now
        if time.monotonic() >= deadline:
            return now
        await asyncio.sleep(0.05)


# -- 1. a full queue is refused at once -----------------------------------------------------

QUEUE_LIMIT = 20  # INVENTORY_MAX_QUEUED_RESERVATIONS of these servers
BURST = 200  # concurrent reserves of the locked product, per path
MIN_REFUSED = BURST - 2 * QUEUE_LIMIT  # the coalescer also has a batch in the database
PROBES = 5  # reserves sent one by one once the queue is full, per path
AT_ONCE = 0.3  # "at once": well under the lock timeout and the deadline
# These servers wait this long for a row lock: nothing leaves the queue (making room)
# while the burst and the probes run, and the row is freed before it passes, so what
# was queued is then held.
BURST_LOCK_TIMEOUT = 3.0
QUEUE_FULL = "too many reservations are waiting"


class Burst:
    """Concurrent reserves of one unit of a product; answers kept as they come."""

    def __init__(self, session: Any, url: str, sku: str, oracle: Oracle) -> None:
        self.session, self.url, self.sku, self.oracle = session, url, sku, oracle
        self.answers: list[Answer] = []
        self.probes: list[Answer] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async def shopper() -> None:
            self.answers.append(await self.reserve())

        await asyncio.gather(*(shopper() for _ in range(BURST)))

    async def reserve(self) -> Answer:
        answer, _ = await self.oracle.reserve(
            self.session, self.url, [(self.sku, 1)], timeout=CLIENT_TIMEOUT
        )
        return answer

    @property
    def refused(self) -> list[Answer]:
        return [a for a in self.answers if QUEUE_FULL in error_message(a)]

    async def probe(self) -> None:
        """One reserve at a time, with the queue full: each refused at once."""
        for _ in range(PROBES):
            self.probes.append(await self.reserve())


async def until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def judge_burst(failures: list[str], name: str, got: Burst, log: Path | None) -> None:
    """What the clients of one path were answered, against the contract."""
    everything = [*got.answers, *got.probes]
    shapes = dict(
        Counter(f"{a.label('reserve')} {error_message(a)[:60]}".strip() for a in everything)
    )
    refused = got.refused
    expect(
        failures,
        len(refused) >= MIN_REFUSED,
        f"{name}: only {len(refused)} of {BURST} concurrent reserves were refused for a full "
        f"queue (limit {QUEUE_LIMIT}): {shapes} (log {log})",
    )
    waited = sorted(round(a.seconds, 2) for a in refused if a.seconds >= BURST_LOCK_TIMEOUT)
    expect(
        failures,
        not waited,
        f"{name}: {len(waited)} queue-full refusals came after the lock timeout "
        f"({BURST_LOCK_TIMEOUT} s): {waited[:5]}",
    )
    slow = [
        f"{a.label('reserve')} {error_message(a)[:60]!r} after {a.seconds:.3f} s"
        for a in got.probes
        if not (QUEUE_FULL in error_message(a) and a.seconds < AT_ONCE)
    ]
    expect(
        failures,
        not slow,
        f"{name}: with the queue full, a reserve must be refused in under {AT_ONCE} s; "
        f"{len(slow)} of {PROBES} were not: {slow}",
    )
    malformed = Counter(
        a.label("reserve")
        for a in everything
        if QUEUE_FULL in error_message(a) and not is_busy_refusal(a, "reserve")
    )
    expect(
        failures,
        not malformed,
        f"{name}: queue-full refusals must be 503 BUSY, retriable, with Retry-After and "
        f"data.reserve null; these were not: {dict(malformed)} "
        f"(first body {next((a.body for a in refused), None)!r:.300})",
    )
    others = Counter(
        a.label("reserve")
        for a in everything
        if a.label("reserve") != "held" and not is_busy_refusal(a, "reserve")
    )
    expect(
        failures,
        not others,
        f"{name}: every reserve must be held or refused BUSY; got {dict(others)} (log {log})",
    )
    longest = max(a.seconds for a in everything)
    expect(
        failures,
        longest <= DEADLINE + BURST_LOCK_TIMEOUT + 1,
        f"{name}: a reserve took {longest:.2f} s (deadline {DEADLINE} s + lock timeout "
        f"{BURST_LOCK_TIMEOUT} s): {shapes}",
    )
    expect(
        failures,
        any(a.label("reserve") == "held" for a in got.answers),
        f"{name}: none of the queued reserves was held once the row was free: {shapes}",
    )


async def test_a_full_reservation_queue_is_refused_at_once(own_database, own_db, tmp_path):
    """What a shopper relies on when a product is swamped while its row is stuck: past
    the queue limit the answer comes at once, a 503 BUSY (retriable, with Retry-After)
    saying nothing is held, instead of a wait for the lock or the deadline; no request
    hangs; nothing is held that no client was told of; what was queued is held once the
    row is free, and the product sells again. Per path, with
    INVENTORY_MAX_QUEUED_RESERVATIONS=20: 200 concurrent reserves of a product whose row
    another transaction holds, then 5 more one at a time; then the row is freed."""
    failures: list[str] = []
    env = {
        "INVENTORY_MAX_QUEUED_RESERVATIONS": str(QUEUE_LIMIT),
        "INVENTORY_LOCK_TIMEOUT_MS": str(int(BURST_LOCK_TIMEOUT * 1000)),
    }
    async with (
        within(60, "the backpressure test"),
        servers(own_database, tmp_path, env) as running,
    ):
        oracles = {path: Oracle(path) for path in running}
        async with client_session() as session:
            skus = {path: await create_product(session, s.url, 1000) for path, s in running.items()}
            locker = await lock_rows(own_database, list(skus.values()))
            try:
                bursts = {
                    path: Burst(session, s.url, skus[path], oracles[path])
                    for path, s in running.items()
                }
                await until(
                    lambda: all(len(b.refused) >= MIN_REFUSED for b in bursts.values()), seconds=2
                )
                await asyncio.gather(*(b.probe() for b in bursts.values()))
            finally:
                await unlock_rows(locker)
            await asyncio.gather(*(b.task for b in bursts.values()))

        # Keep-alive connections idle since the refusals may be closed by now: a new pool.
        async with client_session() as session:
            for path, server in running.items():
                oracle, name, sku = oracles[path], f"coalesce={path}", skus[path]
                judge_burst(failures, name, bursts[path], server.log)
                reserved = (await stock(own_db, sku))["reserved"]
                told = oracle.told_holding_units(sku)
                expect(
                    failures,
                    reserved == told,
                    f"{name}: {reserved} unit(s) reserved, {told} told to clients",
                )
                stuck = await serves_again(session, server.url, sku, oracle)
                expect(failures, stuck is None, f"{name}: not serving after the burst: {stuck}")
                expect_agrees(failures, server, name, await oracle.verify(own_db, [sku]))
    expect_quiet_logs(failures, running)
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures)


# -- 2. WebSocket clients that go away ------------------------------------------------------

# Nothing times out while the row is locked: every request is still waiting when its
# client goes away, in the database or in the process.
WAITING_ENV = {
    "INVENTORY_LOCK_TIMEOUT_MS": "15000",
    "INVENTORY_STATEMENT_TIMEOUT_MS": "20000",
    "INVENTORY_REQUEST_TIMEOUT_SECONDS": "20",
}
KEPT = 2  # operations whose client stays: held once the row is free
COMPLETED = 6  # on the same socket, completed by the client (`complete` message)
CLOSED = 5  # on a socket closed with a close frame
ABORTED = 5  # on a socket whose TCP connection is dropped (a crashed client)

# Statements waiting for this product's row: each waiter takes a lock on the row version.
WAITING_ON = """
SELECT count(*) FROM pg_locks l
JOIN product p ON l.locktype = 'tuple' AND l.relation = 'product'::regclass
  AND p.ctid = format('(%s,%s)', l.page, l.tuple)::tid
WHERE p.sku = $1
"""


def ws_answer(message: dict[str, Any], seconds: float) -> Answer:
    """An operation's first WebSocket message, as the oracle reads an HTTP answer."""
    if message.get("type") == "next":
        return Answer(200, message["payload"], {}, seconds)
    return Answer(None, None, {}, seconds, f"websocket {message.get('type')}")


@dataclass
class Leavers:
    """One path's WebSocket clients: some stay, the rest go away in three ways."""

    sku: str
    oracle: Oracle
    started: float = 0.0
    sockets: list[GraphQLWebSocket] = field(default_factory=list)
    kept: list[Subscription] = field(default_factory=list)
    completed: list[Subscription] = field(default_factory=list)
    closed: list[Subscription] = field(default_factory=list)
    aborted: list[Subscription] = field(default_factory=list)

    @property
    def abandoned(self) -> list[Subscription]:
        return [*self.completed, *self.closed, *self.aborted]

    async def connect(self, session: Any, url: str) -> None:
        self.started = time.monotonic()
        self.sockets = [await GraphQLWebSocket.connect(session, url) for _ in range(3)]

    async def send(self, first: bool) -> None:
        """Start reserve mutations: first one of each kind that leaves, then the rest."""
        staying, closing, aborting = self.sockets
        for operations, socket, count in (
            (self.completed, staying, COMPLETED),
            (self.closed, closing, CLOSED),
            (self.aborted, aborting, ABORTED),
            (self.kept, staying, KEPT),
        ):
            leaving = operations is not self.kept
            for _ in range((1 if leaving else 0) if first else count - len(operations)):
                operations.append(
                    await socket.subscribe(RESERVE, lines=[{"sku": self.sku, "quantity": 1}])
                )

    async def leave(self) -> None:
        for operation in self.completed:
            await operation.complete()
        await self.sockets[1].close()
        self.sockets[2].abort()

    def answered_early(self) -> list[str]:
        """Operations that got any message while the row was locked (none should)."""
        return [
            f"operation {op.id}: {op.waiting} message(s)"
            for op in [*self.kept, *self.abandoned]
            if op.waiting
        ]

    async def hear_kept(self) -> list[str]:
        """Read the kept operations' answers into the oracle; what was not a hold."""
        unheld = []
        for op in self.kept:
            try:
                message = await op.message(timeout=5)
            except TimeoutError:
                message = {"type": "nothing within 5 s"}
            answer = ws_answer(message, time.monotonic() - self.started)
            if self.oracle.record_reserve([(self.sku, 1)], None, answer) is None:
                unheld.append(f"operation {op.id}: {message!r:.300}")
        for _ in self.abandoned:  # gone before any answer: nothing may be held for them
            self.oracle.record_reserve(
                [(self.sku, 1)], None, Answer(None, None, {}, 0.0, "client went away")
            )
        return unheld

    def told_after_leaving(self) -> list[str]:
        """Completed operations that still got a message (their socket stayed open)."""
        return [
            f"operation {op.id}: {op.waiting} message(s)" for op in self.completed if op.waiting
        ]

    async def close(self) -> None:
        for socket in self.sockets:
            with contextlib.suppress(Exception):  # already closed, or dropped
                await asyncio.wait_for(socket.close(), 2)


async def wait_for_waiters(db: asyncpg.Connection, sku: str, seconds: float) -> int:
    """How many statements wait for the product's row, once at least one does."""
    deadline = time.monotonic() + seconds
    while not (waiting := await db.fetchval(WAITING_ON, sku)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return waiting


async def test_websocket_clients_that_go_away_hold_nothing(own_database, own_db, tmp_path):
    """What the shoppers who stay rely on: a WebSocket client that stops waiting for its
    reserve (completes the operation, closes the socket, or drops the connection) before
    its hold is made holds nothing once the row is free, so the stock goes to those who
    stay, and those who stay get their holds. Per path, 18 reserve mutations over
    graphql-transport-ws wait on a product whose row another transaction holds (one of
    each kind that leaves is sent first, until a statement waits in the database; the
    rest queue behind it); 16 of their clients leave (6 `complete`, 5 with a close frame,
    5 by dropping TCP), then the row is freed. The servers wait longer for locks than the
    test lasts, so no request is answered BUSY first."""
    failures: list[str] = []
    async with (
        within(60, "the WebSocket abandonment test"),
        servers(own_database, tmp_path, WAITING_ENV) as running,
        client_session() as session,
    ):
        leavers = {
            path: Leavers(await create_product(session, s.url, 100), Oracle(path))
            for path, s in running.items()
        }
        await asyncio.gather(*(leavers[p].connect(session, s.url) for p, s in running.items()))
        locker = await lock_rows(own_database, [group.sku for group in leavers.values()])
        try:
            await asyncio.gather(*(group.send(first=True) for group in leavers.values()))
            for path, group in leavers.items():
                waiting = await wait_for_waiters(own_db, group.sku, seconds=5)
                expect(failures, waiting > 0, f"coalesce={path}: no statement waits on the row")
            await asyncio.gather(*(group.send(first=False) for group in leavers.values()))
            await asyncio.sleep(0.3)  # the last mutations are queued in the servers too
            for path, group in leavers.items():
                early = group.answered_early()
                expect(
                    failures,
                    not early,
                    f"coalesce={path}: answered while the row was locked: {early}",
                )
            await asyncio.gather(*(group.leave() for group in leavers.values()))
            await asyncio.sleep(0.5)  # the servers see the clients go before the row is free
        finally:
            await unlock_rows(locker)

        for path, group in leavers.items():
            unheld = await group.hear_kept()
            expect(
                failures,
                not unheld,
                f"coalesce={path}: clients who stayed must get their holds once the row is "
                f"free; {len(unheld)} did not: {unheld} (log {running[path].log})",
            )
        reserved = await settled_reserved(
            own_db,
            {g.sku: g.oracle.told_holding_units(g.sku) for g in leavers.values()},
            seconds=6,
        )
        for path, group in leavers.items():
            name, server = f"coalesce={path}", running[path]
            told = group.oracle.told_holding_units(group.sku)
            expect(
                failures,
                reserved[group.sku] == told,
                f"{name}: {reserved[group.sku]} unit(s) held 6 s after the row was freed, "
                f"{told} of them told to clients who stayed ({COMPLETED} completed, {CLOSED} "
                f"closed, {ABORTED} dropped their connection) (log {server.log})",
            )
            late = group.told_after_leaving()
            expect(failures, not late, f"{name}: completed operations still answered: {late}")
            expect_agrees(failures, server, name, await group.oracle.verify(own_db, [group.sku]))
        await asyncio.gather(*(group.close() for group in leavers.values()))
    expect_quiet_logs(failures, running)
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures)


# -- 3. confirm and release of a locked product -----------------------------------------------

RESOLVE_LOCK_TIMEOUT = 0.3  # INVENTORY_LOCK_TIMEOUT_MS of this server
RESOLVE_MARGIN = 0.7


async def hold_states(db: asyncpg.Connection, ids: Iterable[str]) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT id::text, status::text FROM reservation WHERE id = any($1::uuid[])", list(ids)
    )
    return {row["id"]: row["status"] for row in rows}


async def test_confirm_and_release_of_a_locked_product_are_busy_and_change_nothing(
    own_database, own_db, tmp_path
):
    """What a checkout relies on when a product's row is stuck behind another
    transaction: confirming or releasing a hold of it is answered within the lock timeout
    with a 503 BUSY (retriable, Retry-After) that leaves the hold exactly as it was
    (PENDING, its units still reserved), so retrying is safe; once the row is free, the
    retried confirm and release go through. Confirm and release do not go through the
    coalescer: one path is enough."""
    failures: list[str] = []
    env = {"INVENTORY_LOCK_TIMEOUT_MS": str(int(RESOLVE_LOCK_TIMEOUT * 1000))}
    async with (
        within(45, "the locked confirm/release test"),
        servers(own_database, tmp_path, env, paths=("on",)) as running,
        client_session() as session,
    ):
        server, oracle = running["on"], Oracle("on")
        sku = await create_product(session, server.url, 10)
        holds = []
        for _ in range(2):
            answer, rid = await oracle.reserve(session, server.url, [(sku, 2)], timeout=10)
            assert rid is not None, answer
            holds.append(rid)
        to_confirm, to_release = holds
        before = await stock(own_db, sku)

        locker = await lock_rows(own_database, [sku])
        try:
            confirmed = await oracle.confirm(session, server.url, to_confirm, timeout=10)
            released = await oracle.release(session, server.url, to_release, timeout=10)
            states = await hold_states(own_db, holds)
        finally:
            await unlock_rows(locker)
        after = await stock(own_db, sku)

        for action, answer in (("confirm", confirmed), ("release", released)):
            expect(
                failures,
                is_busy_refusal(answer, action),
                f"{action} of a hold of a locked product must be 503 BUSY, retriable, with "
                f"Retry-After and data.{action} null; got {answer.status} {answer.headers} "
                f"{answer.body!r:.400}",
            )
            expect(
                failures,
                answer.seconds <= RESOLVE_LOCK_TIMEOUT + RESOLVE_MARGIN,
                f"{action} of a locked product took {answer.seconds:.2f} s (lock timeout "
                f"{RESOLVE_LOCK_TIMEOUT} s + {RESOLVE_MARGIN} s)",
            )
        expect(
            failures,
            states == dict.fromkeys(holds, "PENDING"),
            f"after BUSY confirm and release the holds must still be PENDING: {states}",
        )
        expect(
            failures,
            after["quantity"] == before["quantity"] and after["reserved"] == before["reserved"],
            f"after BUSY confirm and release the stock must be unchanged: {before} -> {after}",
        )

        confirmed = await oracle.confirm(session, server.url, to_confirm, timeout=10)
        released = await oracle.release(session, server.url, to_release, timeout=10)
        for action, answer, status in (
            ("confirm", confirmed, "CONFIRMED"),
            ("release", released, "RELEASED"),
        ):
            member = answer.payload(action) or {}
            expect(
                failures,
                answer.status == 200 and member.get("status") == status,
                f"{action} once the row is free must answer {status}: {answer.body!r:.400}",
            )
        final = await stock(own_db, sku)
        expect(
            failures,
            (final["quantity"], final["reserved"]) == (before["quantity"] - 2, 0),
            f"after confirming 2 units and releasing 2: {before} -> {final}",
        )
        expect_agrees(failures, server, "coalesce=on", await oracle.verify(own_db, [sku]))
    expect_quiet_logs(failures, running)
    report = await check(own_db)
    expect(failures, report.ok, f"check: {report.problems}")
    assert not failures, failed(failures)
