"""Told equals held with fair drops in play: buyers, a purchase limit, the pending-hold cap
and the waiting list, while one server process is SIGKILLed and restarted and the pool
connections of both are terminated under load.

Every answer a client got is recorded with when it was asked and answered; at the end
each one is compared with the database. A buyer's numbers at the moment a request was
decided are not in the database, but they are bounded by it: a hold its buyer had been
told about before asking, and that ended (`resolved_at`, the ending transaction's start)
only after the answer came, certainly counted; a hold created after the answer came, or
that its buyer had been told had ended before asking, certainly did not. Every grant and
every refusal must fit between those bounds, and so must every place in line (counting
the entries that joined earlier and certainly, or possibly, still waited). A hold or an
entry no client was told of must be the outcome of a lost request of its own: one asked
before its transaction started, that failed after.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.testing.graphql_ws import GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import ADJUST_STOCK, CREATE_PRODUCT
from tests.faults.test_told_vs_held import APPLICATION_NAME, KILL_POOL, within
from tests.support.database import check, new_sku
from tests.support.graphql_http import ADMIN, SERVER_ENV
from tests.support.oracle import Answer, post

SECRET = "told-vs-held-buyers-" + "s" * 44
LIMIT = 2  # units of the drop per buyer
PENDING_CAP = 2  # INVENTORY_MAX_PENDING_HOLDS_PER_BUYER
OFFER_SECONDS = 2  # INVENTORY_WAITLIST_HOLD_SECONDS: offers expire and pass on in the run
BUYERS = 14
CLIENTS_PER_BUYER = 2  # a buyer's requests race each other (one coalesced batch, two servers)
LOAD_SECONDS = 7.0
KILL_AT = 2.0  # one server is SIGKILLed this far into the load, and started again
TERMINATE_AT = (1.0, 3.5, 5.5)  # every pool connection of both servers is terminated
RESTOCK_AT = (3.0, 5.0)  # a restock hands units to the waiting lists
BURST = 150  # anonymous reserves in flight at the server when it is killed
CLIENT_TIMEOUT = 10.0
# A transaction that ended a hold or an entry may have started (its `resolved_at`) this
# long before it committed; only an upper bound uses it, so it is generous.
SLACK = 5.0
Line = tuple[str, int]

LINES = "sku quantity confirmedQuantity releasedQuantity"
HOLD = f"id status lines {{ {LINES} }}"
ENTRY_FIELDS = f"id sku quantity status position reservation {{ {HOLD} }}"
RESERVE = f"""
mutation Reserve($lines: [ReserveLineInput!]!, $ttl: Int, $key: String) {{
  reserve(lines: $lines, ttlSeconds: $ttl, idempotencyKey: $key) {{
    __typename
    ... on Reservation {{ {HOLD} }}
    ... on InsufficientStock {{ sku requested available }}
    ... on PurchaseLimitExceeded {{ sku limit alreadyHeld }}
    ... on BuyerRequired {{ sku }}
    ... on TooManyPendingHolds {{ limit }}
    ... on Problem {{ message }}
  }}
}}
"""
RESOLVED = f"""
    __typename
    ... on Reservation {{ {HOLD} }}
    ... on ReservationNotFound {{ id }}
    ... on ReservationNotPending {{ id status }}
    ... on Problem {{ message }}
"""
CONFIRM = f"mutation Confirm($id: ID!) {{ confirm(id: $id) {{ {RESOLVED} }} }}"
RELEASE = f"""
mutation Release($id: ID!, $lines: [ReserveLineInput!]) {{
  release(id: $id, lines: $lines) {{ {RESOLVED} }}
}}
"""
WAITLIST_RESULT = f"""
    __typename
    ... on WaitlistEntry {{ {ENTRY_FIELDS} }}
    ... on PurchaseLimitExceeded {{ sku limit alreadyHeld }}
    ... on BuyerRequired {{ sku }}
    ... on WaitlistEntryNotFound {{ id }}
    ... on InvalidInput {{ field }}
    ... on Problem {{ message }}
"""
JOIN = f"""
mutation Join($sku: String!, $quantity: Int!) {{
  joinWaitlist(sku: $sku, quantity: $quantity) {{ {WAITLIST_RESULT} }}
}}
"""
LEAVE = f"mutation Leave($id: ID!) {{ leaveWaitlist(id: $id) {{ {WAITLIST_RESULT} }} }}"
ENTRY = f"query Entry($id: ID!) {{ waitlistEntry(id: $id) {{ __typename {ENTRY_FIELDS} }} }}"
PLACE = f"""
subscription Place($id: ID!) {{ waitlistEntry(id: $id) {{ __typename {ENTRY_FIELDS} }} }}
"""
SET_LIMIT = """
mutation Limit($sku: String!, $perBuyer: Int) {
  setPurchaseLimit(sku: $sku, perBuyer: $perBuyer) { __typename }
}
"""

FIELD = {
    "reserve": "reserve",
    "confirm": "confirm",
    "release": "release",
    "give back": "release",
    "foreign release": "release",
    "join": "joinWaitlist",
    "leave": "leaveWaitlist",
    "entry": "waitlistEntry",
    "push": "waitlistEntry",  # the subscription's; asked when it started
}
ENDED = frozenset({"CONFIRMED", "RELEASED", "EXPIRED"})
RETRIABLE = frozenset({"BUSY", "DATABASE_UNAVAILABLE"})
GONE = frozenset({"RELEASED", "EXPIRED"})  # ended, and no longer counted anywhere

# Everything the comparison needs, in one snapshot.
HOLDS = """
SELECT r.id::text AS id, r.buyer, r.status::text AS status, r.idempotency_key AS key,
       extract(epoch FROM r.created_at)::float8 AS created,
       extract(epoch FROM r.resolved_at)::float8 AS resolved,
       array_agg(p.sku ORDER BY p.sku) AS skus,
       array_agg(l.quantity ORDER BY p.sku) AS quantities,
       array_agg(l.confirmed ORDER BY p.sku) AS confirmed,
       array_agg(l.released ORDER BY p.sku) AS released
FROM reservation r
JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
GROUP BY r.id
"""
ENTRIES = """
SELECT w.id::text AS id, w.seq, p.sku, w.buyer, w.quantity, w.status::text AS status,
       w.reservation_id::text AS reservation_id,
       extract(epoch FROM w.created_at)::float8 AS created,
       extract(epoch FROM w.resolved_at)::float8 AS resolved
FROM waitlist_entry w JOIN product p ON p.id = w.product_id
WHERE w.status <> 'VOID'  -- a join's id claimed after a fault: no entry (migration 012)
ORDER BY w.seq
"""
PRODUCTS = """
SELECT p.sku, p.quantity, p.reserved, p.waiting,
       (SELECT coalesce(sum(l.quantity - l.confirmed - l.released), 0) FROM reservation_line l
        JOIN reservation r ON r.id = l.reservation_id
        WHERE l.product_id = p.id AND r.status = 'PENDING') AS held,
       (SELECT coalesce(sum(w.quantity), 0) FROM waitlist_entry w
        WHERE w.product_id = p.id AND w.status = 'WAITING') AS wanted
FROM product p
"""
# What each buyer holds plus has bought of each product (buyer_tally's sum).
TALLIES = """
SELECT r.buyer, p.sku, sum(l.quantity - l.released)::int AS units
FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
WHERE r.buyer IS NOT NULL GROUP BY r.buyer, p.sku
"""


# -- what clients were told ------------------------------------------------------------


@dataclass
class Exchange:
    """One request as its client saw it: asked at `sent`, answered at `received` (wall
    clock, seconds)."""

    op: str
    buyer: str | None  # None: anonymous
    args: dict[str, Any]
    sent: float
    received: float
    answer: Answer
    replay: bool = False  # a lost keyed reserve asked again after the run

    @property
    def member(self) -> dict[str, Any] | None:
        """The union member of a clean answer (200, no errors); None otherwise."""
        if self.answer.status != 200 or self.answer.error:
            return None
        return self.answer.payload(FIELD[self.op])

    @property
    def null(self) -> bool:
        """A clean answer of null (the waitlistEntry query for an unknown entry)."""
        body = self.answer.body
        return (
            self.answer.status == 200
            and not self.answer.error
            and isinstance(body, dict)
            and isinstance(body.get("data"), dict)
            and body["data"].get(FIELD[self.op], "") is None
        )

    @property
    def lost(self) -> bool:
        """The client cannot know what was done: no answer, or an error."""
        return self.member is None and not self.null

    @property
    def unanswered(self) -> bool:
        return not self.answer.answered

    def label(self) -> str:
        if self.null:
            return f"{self.op} null"
        if (member := self.member) is not None:
            return f"{self.op} {member['__typename']}"
        if self.unanswered:
            return f"{self.op} no answer"
        return f"{self.op} error {self.answer.status} {self.answer.code}"

    def __str__(self) -> str:
        return (
            f"{self.op} by {self.buyer or 'anonymous'} {self.args} "
            f"(asked {self.sent:.3f}, answered {self.received:.3f}): {self.answer.body!r:.300}"
        )


@dataclass
class Buyer:
    """What one buyer's clients know, to act on; shared by its clients."""

    name: str
    headers: dict[str, str]
    waits_for: int  # units of the queued product it joins its waiting list for
    holds: dict[str, tuple[Line, ...]] = field(default_factory=dict)  # believed pending
    given_back: set[str] = field(default_factory=set)
    entries: dict[str, str] = field(default_factory=dict)  # believed WAITING: id -> sku
    n: int = 0


class Drop:
    """The run: products, buyers, servers, and every exchange."""

    def __init__(self, limited: str, queued: str, plain: str, servers: list[ServerProcess]):
        self.limited, self.queued, self.plain = limited, queued, plain
        self.servers = servers
        self.exchanges: list[Exchange] = []
        self.told_ids: list[tuple[str, str]] = []  # (hold, buyer) told: foreign probes
        self.events: Counter[str] = Counter()
        self.problems: list[str] = []  # seen as they came (a subscription's order)
        self.session: aiohttp.ClientSession | None = None
        self.until = 0.0  # entries told WAITING before then are followed live
        self.follows: list[asyncio.Task[None]] = []

    def url(self, rng: random.Random) -> str:
        return self.servers[rng.randrange(len(self.servers))].url

    async def ask(
        self,
        session: aiohttp.ClientSession,
        url: str,
        op: str,
        who: Buyer | None,
        query: str,
        variables: dict[str, Any],
        *,
        replay: bool = False,
    ) -> Exchange:
        sent = time.time()
        headers = who.headers if who is not None else None
        answer = await post(session, url, query, variables, CLIENT_TIMEOUT, headers)
        exchange = Exchange(
            op, who.name if who else None, variables, sent, time.time(), answer, replay
        )
        self.exchanges.append(exchange)
        if who is not None:
            self.learn(who, exchange)
        return exchange

    def learn(self, who: Buyer, exchange: Exchange) -> None:
        """Update what the buyer believes from an answer."""
        member = exchange.member
        if member is None:
            return
        kind = member["__typename"]
        if kind == "Reservation":
            if member["status"] == "PENDING":
                who.holds[member["id"]] = tuple(
                    (line["sku"], line["quantity"]) for line in member["lines"]
                )
                self.told_ids.append((member["id"], who.name))
            else:
                who.holds.pop(member["id"], None)
        elif kind == "ReservationNotPending":
            who.holds.pop(member["id"], None)
        elif kind == "WaitlistEntry":
            if member["status"] == "WAITING":
                if member["id"] not in who.entries and self.session and time.time() < self.until:
                    follow_it = follow(self, self.session, who, member["id"])
                    self.follows.append(asyncio.get_running_loop().create_task(follow_it))
                who.entries[member["id"]] = member["sku"]
            else:
                who.entries.pop(member["id"], None)
            hold = member.get("reservation")
            if hold and hold["status"] == "PENDING":
                who.holds[hold["id"]] = ((member["sku"], member["quantity"]),)
                self.told_ids.append((hold["id"], who.name))


# -- the load --------------------------------------------------------------------------


async def follow(drop: Drop, session: aiohttp.ClientSession, who: Buyer, eid: str) -> None:
    """A place in line, live over a WebSocket with the buyer's token: each push recorded
    as an answer asked when the subscription started; positions never go back, and OFFERED
    or LEFT is the last push before the subscription completes."""
    started = time.time()
    url = drop.url(random.Random(eid))
    payload = {"authorization": who.headers["Authorization"]}
    try:
        socket = await GraphQLWebSocket.connect(session, url, payload)
    except (aiohttp.ClientError, aiohttp.WSMessageTypeError, OSError, TimeoutError):
        drop.events["subscriptions not connected"] += 1  # a server was down
        return
    try:
        sub = await socket.subscribe(PLACE, id=eid)
    except (aiohttp.ClientError, OSError):
        drop.events["subscriptions not connected"] += 1
        await socket.close()
        return
    try:
        position, ended = None, None
        while (left := drop.until + 1 - time.time()) > 0:
            try:
                message = await sub.message(left)
            except TimeoutError:
                break
            if message["type"] == "complete":
                drop.events["subscriptions completed"] += 1
                if ended is None:
                    drop.problems.append(f"entry {eid}'s subscription completed while WAITING")
                break
            if message["type"] != "next" or message["payload"].get("errors"):
                drop.events[f"subscriptions ended by {message['type']}"] += 1
                # The server was killed, or a database connection: a typed, retriable
                # error (the client subscribes again), never anything else.
                pushed = message.get("payload")
                reported = pushed.get("errors") if isinstance(pushed, dict) else pushed
                for error in reported or []:
                    extensions = error.get("extensions") or {}
                    if extensions.get("code") not in RETRIABLE or not extensions.get("retriable"):
                        drop.problems.append(f"entry {eid}'s subscription ended by {message}")
                break
            answer = Answer(200, message["payload"], {}, time.time() - started)
            exchange = Exchange("push", who.name, {"id": eid}, started, time.time(), answer)
            drop.exchanges.append(exchange)
            drop.learn(who, exchange)
            entry = message["payload"]["data"]["waitlistEntry"]
            if ended is not None:
                drop.problems.append(f"entry {eid} pushed after {ended}: {exchange}")
            elif entry["status"] != "WAITING":
                ended = entry["status"]
            elif position is not None and entry["position"] > position:
                drop.problems.append(f"entry {eid} went back from {position}: {exchange}")
            else:
                position = entry["position"]
    finally:
        await socket.close()


def key_for(who: Buyer, rng: random.Random) -> str | None:
    who.n += 1
    return f"{who.name}-{who.n}-{uuid.uuid4().hex[:8]}" if rng.random() < 0.25 else None


async def reserve(
    drop: Drop, session: aiohttp.ClientSession, who: Buyer | None, lines: list[Line], rng
) -> Exchange:
    variables: dict[str, Any] = {
        "lines": [{"sku": sku, "quantity": q} for sku, q in lines],
        "ttl": rng.choice((1, 3, 30, 30)),
    }
    if who is not None and (key := key_for(who, rng)):
        variables["key"] = key
    return await drop.ask(session, drop.url(rng), "reserve", who, RESERVE, variables)


async def client(drop: Drop, session: aiohttp.ClientSession, who: Buyer, i: int, until: float):
    """One of a buyer's clients: reserves (the drop alone, in a cart, the queued product),
    pays, gives back, joins and leaves waiting lists, reads its entries, and probes other
    buyers' holds."""
    rng = random.Random(f"{who.name}-{i}")
    wants = {drop.limited: 1, drop.queued: who.waits_for}  # one WAITING entry per sku
    while time.time() < until:
        roll = rng.random()
        url = drop.url(rng)
        exchange: Exchange | None = None
        if who.holds and roll < 0.3:
            rid = rng.choice(list(who.holds))
            lines = who.holds[rid]
            if lines == ((drop.queued, 2),) and rid not in who.given_back and rng.random() < 0.4:
                who.given_back.add(rid)  # one unit back, once: the hold stays PENDING
                variables: dict[str, Any] = {
                    "id": rid,
                    "lines": [{"sku": drop.queued, "quantity": 1}],
                }
                exchange = await drop.ask(session, url, "give back", who, RELEASE, variables)
            elif rng.random() < 0.4:
                exchange = await drop.ask(session, url, "confirm", who, CONFIRM, {"id": rid})
            else:
                exchange = await drop.ask(session, url, "release", who, RELEASE, {"id": rid})
        elif roll < 0.5:
            exchange = await reserve(
                drop, session, who, [(drop.limited, rng.choice((1, 1, 2)))], rng
            )
        elif roll < 0.58:
            exchange = await reserve(drop, session, who, [(drop.limited, 1), (drop.plain, 1)], rng)
        elif roll < 0.7:
            exchange = await reserve(drop, session, who, [(drop.queued, rng.choice((1, 2)))], rng)
        elif roll < 0.74:
            exchange = await reserve(drop, session, who, [(drop.plain, 1)], rng)
        elif roll < 0.86:
            sku = rng.choice((drop.limited, drop.queued))
            variables = {"sku": sku, "quantity": wants[sku]}
            exchange = await drop.ask(session, url, "join", who, JOIN, variables)
        elif roll < 0.9 and who.entries:
            eid = rng.choice(list(who.entries))
            exchange = await drop.ask(session, url, "leave", who, LEAVE, {"id": eid})
        elif roll < 0.97 and who.entries:
            eid = rng.choice(list(who.entries))
            exchange = await drop.ask(session, url, "entry", who, ENTRY, {"id": eid})
        elif drop.told_ids:
            rid, owner = rng.choice(drop.told_ids)
            if owner != who.name:
                variables = {"id": rid}
                exchange = await drop.ask(session, url, "foreign release", who, RELEASE, variables)
        lost = exchange is not None and exchange.lost
        await asyncio.sleep(rng.uniform(0.02, 0.06) if lost else rng.uniform(0.002, 0.02))


async def anonymous(drop: Drop, session: aiohttp.ClientSession, until: float) -> None:
    """A caller without a buyer token: the drop and the waiting list need one."""
    rng = random.Random("anonymous")
    while time.time() < until:
        roll = rng.random()
        if roll < 0.4:
            await reserve(drop, session, None, [(drop.limited, 1)], rng)
        elif roll < 0.6:
            await drop.ask(
                session, drop.url(rng), "join", None, JOIN, {"sku": drop.queued, "quantity": 1}
            )
        else:
            exchange = await reserve(drop, session, None, [(drop.plain, 1)], rng)
            if (member := exchange.member) and member["__typename"] == "Reservation":
                await drop.ask(
                    session, drop.url(rng), "release", None, RELEASE, {"id": member["id"]}
                )
        await asyncio.sleep(rng.uniform(0.02, 0.05))


async def hoarder(drop: Drop, session: aiohttp.ClientSession, who: Buyer, until: float) -> None:
    """A buyer who keeps holding and never pays: it lives at the pending-hold cap."""
    rng = random.Random(who.name)
    while time.time() < until:
        await reserve(drop, session, who, [(drop.plain, 1)], rng)
        await asyncio.sleep(rng.uniform(0.05, 0.15))


async def faults(
    drop: Drop,
    session: aiohttp.ClientSession,
    database_url: str,
    env: dict[str, str],
    start: float,
    tmp_path,
) -> None:
    """SIGKILL one server and start another in its place; terminate every pool connection
    of the service a few times; restock both scarce products twice (offers to the queues)."""
    conn = await asyncpg.connect(database_url, command_timeout=10)
    restarting: asyncio.Task[None] | None = None
    try:
        plan = sorted(
            [(at, "terminate") for at in TERMINATE_AT]
            + [(at, "restock") for at in RESTOCK_AT]
            + [(KILL_AT, "kill")]
        )
        for at, what in plan:
            await asyncio.sleep(max(0.0, start + at - time.time()))
            if what == "terminate":
                drop.events["pool connections terminated"] += await conn.fetchval(
                    KILL_POOL, APPLICATION_NAME
                )
            elif what == "restock":
                for sku in (drop.limited, drop.queued):
                    answer = await post(
                        session,
                        drop.servers[1].url,
                        ADJUST_STOCK,
                        {"sku": sku, "delta": 2, "reason": "restock"},
                        CLIENT_TIMEOUT,
                        ADMIN,
                    )
                    drop.events[f"restock {answer.status}"] += 1
            else:  # the restart takes a moment: the rest keeps to its schedule
                restarting = asyncio.create_task(restart(drop, session, env, tmp_path))
        assert restarting is not None
        await restarting
    finally:
        await conn.close()


async def restart(
    drop: Drop, session: aiohttp.ClientSession, env: dict[str, str], tmp_path
) -> None:
    """SIGKILL the first server mid-flight, no goodbye, while a burst of reserves is in
    flight there (some commit, and their answers never leave); start another in its place."""
    victim = drop.servers[0]

    async def one(n: int) -> Exchange:
        variables: dict[str, Any] = {"lines": [{"sku": drop.plain, "quantity": 1}], "ttl": 30}
        if n % 2:
            variables["key"] = f"burst-{n}-{uuid.uuid4().hex[:8]}"
        return await drop.ask(session, victim.url, "reserve", None, RESERVE, variables)

    burst = [asyncio.create_task(one(n)) for n in range(BURST)]
    while not any(task.done() for task in burst):  # the first batch answered
        await asyncio.sleep(0.002)
    os.kill(victim.process.pid, signal.SIGKILL)
    await asyncio.gather(*burst)
    await asyncio.to_thread(victim.process.wait)
    drop.events["servers killed"] += 1
    # Clients reach it as soon as it is there (refused until it listens, as the dead one);
    # in the list, it is stopped with the others at the end.
    drop.servers[0] = ServerProcess(env, log=tmp_path / "server-restarted.log")
    await asyncio.to_thread(drop.servers[0].wait_ready)


# -- the comparison --------------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    """When a decision was made: after `sent`, before `received` (our clock)."""

    sent: float
    received: float


@dataclass
class HoldSeen:
    """A hold as clients were told about it."""

    buyer: str | None
    lines: tuple[Line, ...]
    told_at: float  # when the first answer naming it came
    ended: dict[str, float] = field(default_factory=dict)  # status -> first told at
    pending_asked: list[float] = field(default_factory=list)  # asked at, answered PENDING
    released: Counter[str] = field(default_factory=Counter)  # most units told given back
    uncertain: set[str] = field(default_factory=set)  # targets of lost confirms/releases


@dataclass
class EntrySeen:
    buyer: str
    sku: str
    quantity: int
    seen: list[tuple[Exchange, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Snapshot:
    """The database in one transaction; times on this process's clock."""

    holds: dict[str, asyncpg.Record]
    entries: dict[str, asyncpg.Record]
    products: list[asyncpg.Record]
    tallies: list[asyncpg.Record]
    offset: float  # database clock minus ours
    error: float  # how far off `offset` may be
    taken: float  # when (our clock)

    def at(self, epoch: float | None) -> float | None:
        return None if epoch is None else epoch - self.offset


def lines_of(raw: Iterable[dict[str, Any]]) -> tuple[Line, ...]:
    return tuple(sorted((line["sku"], line["quantity"]) for line in raw))


class Verdict:
    """Every exchange against one snapshot of the database; `run` lists the problems."""

    def __init__(self, drop: Drop, db: Snapshot) -> None:
        self.drop, self.db = drop, db
        self.problems: list[str] = []
        self.checked: Counter[str] = Counter()  # what was compared, for the message
        self.holds: dict[str, HoldSeen] = {}
        self.entries: dict[str, EntrySeen] = {}
        self.eps = db.error + 0.01
        self.by_buyer: dict[str | None, list[asyncpg.Record]] = defaultdict(list)
        for row in db.holds.values():
            self.by_buyer[row["buyer"]].append(row)

    def problem(self, message: str) -> None:
        self.problems.append(message)

    # -- what was told, gathered ---------------------------------------------------------

    def saw_hold(self, exchange: Exchange, hold: dict[str, Any]) -> None:
        rid, status = hold["id"], hold["status"]
        lines = lines_of(hold["lines"])
        seen = self.holds.get(rid)
        if seen is None:
            seen = self.holds[rid] = HoldSeen(exchange.buyer, lines, exchange.received)
        if seen.buyer != exchange.buyer:
            self.problem(f"{rid} told to {seen.buyer} and to {exchange.buyer}: {exchange}")
        if seen.lines != lines:
            self.problem(f"{rid} told with lines {seen.lines}, then {lines}: {exchange}")
        if status in ENDED:
            seen.ended.setdefault(status, exchange.received)  # answers come in order
        else:
            seen.pending_asked.append(exchange.sent)
        for line in hold["lines"]:
            sku = line["sku"]
            seen.released[sku] = max(seen.released[sku], line["releasedQuantity"])

    def gather(self) -> None:
        for exchange in sorted(self.drop.exchanges, key=lambda e: e.received):
            member = exchange.member
            if exchange.op in ("confirm", "release", "give back") and exchange.lost:
                target = {"confirm": "CONFIRMED", "release": "RELEASED"}.get(exchange.op)
                if target and exchange.args["id"] in self.holds:
                    self.holds[exchange.args["id"]].uncertain.add(target)
            if member is None:
                continue
            kind = member["__typename"]
            if kind == "Reservation" and exchange.op != "foreign release":
                self.saw_hold(exchange, member)
            elif kind == "ReservationNotPending" and exchange.op != "foreign release":
                seen = self.holds.get(member["id"])
                if seen is None:
                    self.problem(f"an answer about a hold never told: {exchange}")
                else:
                    seen.ended.setdefault(member["status"], exchange.received)
            elif kind == "WaitlistEntry" and exchange.buyer is not None:
                entry = self.entries.setdefault(
                    member["id"], EntrySeen(exchange.buyer, member["sku"], member["quantity"])
                )
                entry.seen.append((exchange, member))
                if (entry.buyer, entry.sku, entry.quantity) != (
                    exchange.buyer,
                    member["sku"],
                    member["quantity"],
                ):
                    self.problem(f"entry {member['id']} told otherwise before: {exchange}")
                if member["reservation"] is not None:
                    self.saw_hold(exchange, member["reservation"])

    # -- a buyer's numbers when a request was decided, bounded -----------------------

    def tally(
        self, buyer: str, sku: str, exchange: Asked | Exchange, exclude: str = ""
    ) -> tuple[int, int]:
        """What `buyer` held plus had bought of `sku` when `exchange` was decided: at least,
        at most. (The drop's lines are never given back in part: all or nothing counts.)"""
        lower = upper = 0
        for row in self.by_buyer[buyer]:
            units = dict(zip(row["skus"], row["quantities"], strict=True)).get(sku)
            if units is None or row["id"] == exclude:
                continue
            counts_now = row["status"] in ("PENDING", "CONFIRMED")
            lower += units * self.certain(row, exchange, counts_now)
            upper += units * self.possible(row, exchange, counts_now, GONE)
        return lower, upper

    def pending(self, buyer: str, exchange: Asked | Exchange, exclude: str = "") -> tuple[int, int]:
        """How many holds `buyer` had PENDING when `exchange` was decided: at least, at most."""
        lower = upper = 0
        for row in self.by_buyer[buyer]:
            if row["id"] != exclude:
                counts_now = row["status"] == "PENDING"
                lower += self.certain(row, exchange, counts_now)
                upper += self.possible(row, exchange, counts_now, ENDED)
        return lower, upper

    def certain(self, row: asyncpg.Record, exchange: Asked | Exchange, counts_now: bool) -> bool:
        """Committed before the request was asked (its buyer had been told of it), and not
        ended by a transaction that started before the answer came."""
        seen = self.holds.get(row["id"])
        if seen is None or seen.told_at >= exchange.sent:
            return False
        resolved = self.db.at(row["resolved"])
        return counts_now or (resolved is not None and resolved > exchange.received + self.eps)

    def possible(
        self,
        row: asyncpg.Record,
        exchange: Asked | Exchange,
        counts_now: bool,
        stops: frozenset[str],
    ) -> bool:
        """Not created after the answer came, nor told ended (in `stops`) before the
        request was asked, nor ended long before it."""
        created = self.db.at(row["created"])
        assert created is not None
        if created > exchange.received + self.eps:
            return False
        seen = self.holds.get(row["id"])
        if seen and any(at < exchange.sent for st, at in seen.ended.items() if st in stops):
            return False
        resolved = self.db.at(row["resolved"])
        return counts_now or (resolved is not None and resolved >= exchange.sent - SLACK)

    def queue_waits(self, sku: str, exchange: Exchange) -> bool:
        """Whether someone certainly waited for `sku` when `exchange` was decided: its
        buyer had been told it was WAITING before the request was asked, and it stopped
        waiting (`resolved_at`) only after the answer came."""
        for eid, entry in self.entries.items():
            row = self.db.entries.get(eid)
            told = [e.received for e, m in entry.seen if m["status"] == "WAITING"]
            if entry.sku != sku or row is None or not told or min(told) >= exchange.sent:
                continue
            resolved = self.db.at(row["resolved"])
            if resolved is None or resolved > exchange.received + self.eps:
                return True
        return False

    # -- each answer against the database --------------------------------------------

    def limit_refusal(self, exchange: Exchange, member: dict[str, Any], wanted: int) -> None:
        if exchange.buyer is None or member["sku"] != self.drop.limited:
            self.problem(f"PurchaseLimitExceeded for an unlimited sku or no buyer: {exchange}")
            return
        self.checked["limit refusals"] += 1
        lower, upper = self.tally(exchange.buyer, self.drop.limited, exchange)
        held = member["alreadyHeld"]
        if member["limit"] != LIMIT or held + wanted <= LIMIT or not lower <= held <= upper:
            self.problem(
                f"refusal not true of the numbers: the buyer had {lower} to {upper} of "
                f"limit {LIMIT} then: {exchange}"
            )

    def reserve(self, exchange: Exchange) -> None:
        member = exchange.member
        if member is None:
            return
        kind, who = member["__typename"], exchange.buyer
        asked = dict(lines_of(exchange.args["lines"]))
        limited = asked.get(self.drop.limited)
        if kind == "Reservation":
            rid = member["id"]
            if lines_of(member["lines"]) != tuple(sorted(asked.items())):
                self.problem(f"held other lines than asked: {exchange}")
            if limited and who is None:
                self.problem(f"an anonymous caller held a limited sku: {exchange}")
            if who is None or exchange.replay:
                return  # a replay may answer a hold granted long before
            for sku in asked:
                if sku != self.drop.plain and self.queue_waits(sku, exchange):
                    self.problem(f"granted {sku} while someone waited for it: {exchange}")
            self.checked["grants"] += 1
            lower, _ = self.tally(who, self.drop.limited, exchange, exclude=rid)
            if limited and lower + limited > LIMIT:
                self.problem(f"granted past the limit (held at least {lower}): {exchange}")
            lower, _ = self.pending(who, exchange, exclude=rid)
            if lower + 1 > PENDING_CAP:
                self.problem(f"granted past the pending cap ({lower} pending): {exchange}")
        elif kind == "PurchaseLimitExceeded":
            self.limit_refusal(exchange, member, limited or 0)
        elif kind == "TooManyPendingHolds":
            _, upper = self.pending(who, exchange) if who else (0, 0)
            if member["limit"] != PENDING_CAP or upper < PENDING_CAP:
                self.problem(f"cap refusal with at most {upper} pending: {exchange}")
        elif kind == "InsufficientStock":
            requested = asked.get(member["sku"])
            if requested != member["requested"] or not 0 <= member["available"] < requested:
                self.problem(f"InsufficientStock not true of the request: {exchange}")
            elif self.queue_waits(member["sku"], exchange):
                self.checked["refusals while a queue waited"] += 1
                if member["available"]:
                    self.problem(f"while someone waits nothing is available: {exchange}")
        elif kind == "BuyerRequired":
            if who is not None or member["sku"] != self.drop.limited:
                self.problem(f"BuyerRequired for a buyer or an unlimited sku: {exchange}")
        else:
            self.problem(f"unexpected answer: {exchange}")
        if who is None and limited and kind != "BuyerRequired":
            self.problem(f"an anonymous reserve of the drop was not BuyerRequired: {exchange}")

    def resolution(self, exchange: Exchange) -> None:
        member = exchange.member
        if member is None:
            return
        kind = member["__typename"]
        if exchange.op == "foreign release":
            if kind != "ReservationNotFound":
                self.problem(f"another buyer's hold was not unknown: {exchange}")
            return
        if kind not in ("Reservation", "ReservationNotPending"):
            self.problem(f"the buyer's own hold answered {kind}: {exchange}")
        elif exchange.op != "give back" and member["status"] == "PENDING":
            self.problem(f"a {exchange.op} answered the hold still PENDING: {exchange}")

    def waitlist(self, exchange: Exchange) -> None:
        member, who = exchange.member, exchange.buyer
        if exchange.null:
            self.problem(f"the buyer's own entry answered as unknown: {exchange}")
        if member is None:
            return
        kind = member["__typename"]
        if who is None:
            if kind != "BuyerRequired":
                self.problem(f"an anonymous join was not BuyerRequired: {exchange}")
            return
        if kind == "PurchaseLimitExceeded" and exchange.op == "join":
            self.limit_refusal(exchange, member, exchange.args["quantity"])
        elif kind != "WaitlistEntry":
            self.problem(f"unexpected answer: {exchange}")
        elif exchange.op == "leave" and member["status"] == "WAITING":
            self.problem(f"a leave answered the entry still WAITING: {exchange}")

    def entry(self, eid: str, entry: EntrySeen) -> None:
        row = self.db.entries.get(eid)
        if row is None:
            self.problem(f"entry {eid} told to {entry.buyer}: not in the database")
            return
        if (row["buyer"], row["sku"], row["quantity"]) != (entry.buyer, entry.sku, entry.quantity):
            self.problem(f"entry {eid} told {entry.buyer} {entry.sku} x{entry.quantity}: {row}")
        ends: dict[str, float] = {}  # status -> first told at
        for told, member in entry.seen:
            if member["status"] != "WAITING":
                ends.setdefault(member["status"], told.received)
        if len(ends) > 1 or (ends and row["status"] not in ends):
            self.problem(f"entry {eid} told {sorted(ends)}, the database says {row['status']}")
        earlier = [
            other
            for other in self.db.entries.values()
            if other["sku"] == row["sku"] and other["seq"] < row["seq"]
        ]
        for exchange, member in entry.seen:
            offered = member["reservation"]
            if member["status"] == "OFFERED" and (
                offered is None or offered["id"] != row["reservation_id"]
            ):
                self.problem(f"entry {eid} told OFFERED {offered}, held {row['reservation_id']}")
            if member["status"] != "WAITING":
                continue
            # In line for the drop: what the buyer has plus what it waits for is within the
            # limit (checked at the join; nothing of the drop is granted while anyone waits).
            if row["sku"] == self.drop.limited:
                lower, _ = self.tally(entry.buyer, row["sku"], exchange)
                if lower + entry.quantity > LIMIT:
                    self.problem(f"entry {eid} waits past the limit (held {lower}): {exchange}")
            if any(at < exchange.sent for at in ends.values()):
                self.problem(f"entry {eid} told WAITING after it was told it ended: {exchange}")
            self.checked["places in line"] += 1
            lower = sum(self.waits(other, exchange, certainly=True) for other in earlier)
            upper = sum(self.waits(other, exchange, certainly=False) for other in earlier)
            if not lower <= member["position"] - 1 <= upper:
                self.problem(
                    f"entry {eid} told position {member['position']}, {lower} to {upper} "
                    f"entries were ahead of it then: {exchange}"
                )

    def waits(self, row: asyncpg.Record, exchange: Exchange, certainly: bool) -> bool:
        """Whether an entry that joined earlier was still WAITING when `exchange` was
        decided: certainly (`certainly`) or possibly."""
        resolved = self.db.at(row["resolved"])
        if resolved is None:
            return True
        if certainly:
            return resolved > exchange.received + self.eps
        return resolved >= exchange.sent - SLACK

    def hold(self, rid: str, seen: HoldSeen) -> None:
        row = self.db.holds.get(rid)
        if row is None:
            self.problem(f"told held {rid} {seen.lines} ({seen.buyer}): not in the database")
            return
        lines = tuple(sorted(zip(row["skus"], row["quantities"], strict=True)))
        if row["buyer"] != seen.buyer or lines != seen.lines:
            self.problem(
                f"told {rid} {seen.lines} for {seen.buyer}: held {lines} for {row['buyer']}"
            )
        status = row["status"]
        if len(seen.ended) > 1 or (seen.ended and status not in seen.ended):
            self.problem(f"{rid} told {sorted(seen.ended)}, the database says {status}")
        if not seen.ended and status not in {"PENDING", "EXPIRED"} | seen.uncertain:
            self.problem(
                f"{rid} never told it ended, nor asked to end it: the database says {status}"
            )
        if any(asked > at for asked in seen.pending_asked for at in seen.ended.values()):
            self.problem(f"{rid} told PENDING again after it was told {sorted(seen.ended)}")
        released = dict(zip(row["skus"], row["released"], strict=True))
        if any(released.get(sku, 0) < units for sku, units in seen.released.items()):
            self.problem(f"{rid} told {dict(seen.released)} given back; released: {released}")

    def offers(self) -> None:
        """The queue's offers of the drop: within the limit when they were made (after the
        hold's transaction started, before its buyer heard of it or this snapshot)."""
        for row in self.db.entries.values():
            if row["status"] != "OFFERED" or row["sku"] != self.drop.limited:
                continue
            hold = self.db.holds.get(row["reservation_id"])
            if hold is None:
                self.problem(f"entry {row['id']} OFFERED a hold that does not exist")
                continue
            seen = self.holds.get(hold["id"])
            created = self.db.at(hold["created"])
            assert created is not None
            when = Asked(created, seen.told_at if seen else self.db.taken)
            lower, _ = self.tally(row["buyer"], row["sku"], when, exclude=hold["id"])
            if lower + row["quantity"] > LIMIT:
                self.problem(f"offered {hold['id']} past the limit (held at least {lower})")

    def match(
        self,
        what: str,
        made: dict[Any, list[tuple[float, str]]],
        lost: dict[Any, list[Exchange]],
    ) -> None:
        """Each thing made that no client was told of is the outcome of a lost request of
        its own: one of the same kind, asked before the thing's transaction started and
        failed after. (Greedy in time order, the earliest failure first: a matching if
        there is one.) A request matched is used up: `lost` loses it."""
        for key, things in made.items():
            free = lost.setdefault(key, [])
            for at, ident in sorted(things):
                fits = [e for e in free if e.sent - self.eps <= at <= e.received + self.eps]
                if not fits:
                    self.problem(
                        f"{what} {ident} {key} (its transaction started at {at:.3f}): no "
                        f"client was told, and no such request was lost then ({len(free)} "
                        "lost at other times)"
                    )
                    continue
                free.remove(min(fits, key=lambda e: e.received))

    def untold(self) -> None:
        """Holds and entries no client was told about: offers made to the queue, or the
        outcome of a request whose answer was lost, each at most once."""
        drop = self.drop
        lost = [e for e in drop.exchanges if e.lost and not e.answer.is_typed_retriable()]
        lost_reserves: defaultdict[Any, list[Exchange]] = defaultdict(list)
        lost_joins: defaultdict[Any, list[Exchange]] = defaultdict(list)
        for e in lost:
            if e.op == "reserve":
                lost_reserves[(e.buyer, lines_of(e.args["lines"]))].append(e)
            elif e.op == "join":
                lost_joins[(e.buyer, e.args["sku"], e.args["quantity"])].append(e)
        lost_keys = {
            (e.buyer, e.args["key"])
            for e in drop.exchanges
            if e.op == "reserve" and e.lost and e.args.get("key")
        }
        offers = {
            row["reservation_id"]: row for row in self.db.entries.values() if row["reservation_id"]
        }
        untold: defaultdict[Any, list[tuple[float, str]]] = defaultdict(list)
        for rid, row in self.db.holds.items():
            lines = tuple(sorted(zip(row["skus"], row["quantities"], strict=True)))
            if rid in offers:
                offer = offers[rid]
                if (row["buyer"], lines) != (offer["buyer"], ((offer["sku"], offer["quantity"]),)):
                    self.problem(f"offer {rid} {lines} for {row['buyer']}: entry {dict(offer)}")
            elif rid not in self.holds and (row["buyer"], row["key"]) not in lost_keys:
                untold[(row["buyer"], lines)].append((row["created"] - self.db.offset, rid))
                self.checked[f"{row['status']} holds of lost answers"] += 1
        self.match("hold", untold, lost_reserves)
        untold_entries: defaultdict[Any, list[tuple[float, str]]] = defaultdict(list)
        undone_entries: defaultdict[Any, list[tuple[float, str]]] = defaultdict(list)
        for eid, row in self.db.entries.items():
            if eid not in self.entries:
                key = (row["buyer"], row["sku"], row["quantity"])
                untold = untold_entries if row["status"] == "WAITING" else undone_entries
                untold[key].append((row["created"] - self.db.offset, eid))
        self.match("entry", untold_entries, lost_joins)
        # A join answered "nothing done" (the typed 503) whose entry was made after all and
        # could not be settled at once is given back (join_give_back.py): it no longer
        # waits (LEFT, or OFFERED with its hold released).
        for e in drop.exchanges:
            if e.op == "join" and e.answer.is_typed_retriable():
                lost_joins[(e.buyer, e.args["sku"], e.args["quantity"])].append(e)
        self.match("entry", undone_entries, lost_joins)
        for exchange in drop.exchanges:
            member = exchange.member
            if exchange.replay and member and member["__typename"] == "Reservation":
                replayed = self.db.holds.get(member["id"])
                if replayed is None or replayed["key"] != exchange.args["key"]:
                    self.problem(f"a replayed key answered another hold: {exchange}")
                elif (self.db.at(row["created"]) or 0) < exchange.sent:
                    self.checked["lost holds recovered by their key"] += 1
            elif (
                exchange.replay
                and member
                and any(row["key"] == exchange.args["key"] for row in self.by_buyer[exchange.buyer])
            ):
                self.problem(f"a replayed key was refused, its hold exists: {exchange}")

    def totals(self) -> None:
        for row in self.db.products:
            if (row["reserved"], row["waiting"]) != (row["held"], row["wanted"]):
                self.problem(f"{row['sku']}: {dict(row)}")
        for row in self.db.tallies:
            if row["sku"] == self.drop.limited and row["units"] > LIMIT:
                self.problem(f"{row['buyer']} holds plus bought {row['units']} of the drop")

    def run(self) -> list[str]:
        self.problems += self.drop.problems
        self.gather()
        for exchange in self.drop.exchanges:
            if exchange.answer.error and not exchange.answer.is_typed_retriable():
                self.problem(f"an error that is not the typed retriable 503: {exchange}")
            if exchange.op == "reserve":
                self.reserve(exchange)
            elif exchange.op in ("join", "leave", "entry", "push"):
                self.waitlist(exchange)
            else:
                self.resolution(exchange)
        for rid, seen in self.holds.items():
            self.hold(rid, seen)
        for eid, entry in self.entries.items():
            self.entry(eid, entry)
        self.offers()
        self.untold()
        self.totals()
        return self.problems


async def snapshot(db: asyncpg.Connection) -> Snapshot:
    before = time.time()
    now = await db.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    after = time.time()
    async with db.transaction(isolation="repeatable_read", readonly=True):
        holds = {row["id"]: row for row in await db.fetch(HOLDS)}
        entries = {row["id"]: row for row in await db.fetch(ENTRIES)}
        products = await db.fetch(PRODUCTS)
        tallies = await db.fetch(TALLIES)
    offset, error = now - (before + after) / 2, (after - before) / 2
    return Snapshot(holds, entries, products, tallies, offset, error, time.time())


# -- the test ----------------------------------------------------------------------------


async def admin(session: aiohttp.ClientSession, url: str, query: str, **variables: Any) -> str:
    answer = await post(session, url, query, variables, CLIENT_TIMEOUT, ADMIN)
    body = answer.body
    assert answer.status == 200 and isinstance(body, dict) and not answer.error, body
    (member,) = body["data"].values()
    return str(member["__typename"])


async def settle(
    drop: Drop, session: aiohttp.ClientSession, buyers: dict[str | None, Buyer | None]
) -> None:
    """After the load: every lost keyed reserve asked again with its key (the hold it made,
    if any, must come back), then every entry read as its buyer sees it now."""
    url = drop.servers[1].url
    lost = [e for e in drop.exchanges if e.op == "reserve" and e.lost and e.args.get("key")]
    await asyncio.gather(
        *(
            drop.ask(session, url, "reserve", buyers[e.buyer], RESERVE, e.args, replay=True)
            for e in lost
        )
    )
    told = {
        (e.buyer, member["id"])
        for e in drop.exchanges
        if e.buyer is not None
        and (member := e.member) is not None
        and member["__typename"] == "WaitlistEntry"
    }
    await asyncio.gather(
        *(drop.ask(session, url, "entry", buyers[b], ENTRY, {"id": eid}) for b, eid in told)
    )


async def test_a_fair_drop_tells_every_buyer_what_is_held_through_kills_and_broken_connections(
    own_database, own_db, tmp_path
):
    """What a buyer at a drop relies on, while a server dies and connections break: every
    hold it is told about is its own, whole, as told; every refusal (the limit, the cap,
    the stock, a missing buyer) is true of the numbers of that moment and changed nothing;
    nobody gets past the limit or ahead of the queue; a place in line (answered or pushed
    live) is the place it says, and an offer is the hold the queue made; a request whose
    answer was lost made at most one hold, and its key finds it. 14 buyers (two clients
    each) at two coalescing servers: a drop of 8 units, limit 2, alone and in carts with a
    plain product; a 4-unit product whose queue is served by releases, partial releases,
    expiries and restocks; a pending-hold cap of 2, and a buyer who lives at it; an
    anonymous caller; 150 reserves in flight at the server when it is killed."""
    env = {
        "DATABASE_URL": own_database,
        **SERVER_ENV,
        "INVENTORY_COALESCE_RESERVATIONS": "on",
        "INVENTORY_BUYER_TOKEN_SECRET": SECRET,
        "INVENTORY_MAX_PENDING_HOLDS_PER_BUYER": str(PENDING_CAP),
        "INVENTORY_WAITLIST_HOLD_SECONDS": str(OFFER_SECONDS),
    }
    started = [ServerProcess(env, log=tmp_path / f"server-{i}.log") for i in range(2)]
    running = list(started)
    try:
        async with (
            within(90, "the fair-drop fault test"),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):
            await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in started))
            url = started[0].url
            limited, queued, plain = new_sku("DROP"), new_sku("QUEUED"), new_sku("PLAIN")
            for sku, quantity in ((limited, 8), (queued, 4), (plain, 100_000)):
                made = await admin(
                    session, url, CREATE_PRODUCT, sku=sku, name=sku, quantity=quantity
                )
                assert made == "Product"
            assert await admin(session, url, SET_LIMIT, sku=limited, perBuyer=LIMIT) == "Product"
            drop = Drop(limited, queued, plain, running)
            tokens = BuyerTokens(SECRET)
            shoppers = [
                Buyer(name, {"Authorization": f"Bearer {tokens.mint(name)}"}, 1 + i % 2)
                for i, name in enumerate(f"buyer-{i}" for i in range(BUYERS))
            ]
            hoarding = Buyer("hoarder", {"Authorization": f"Bearer {tokens.mint('hoarder')}"}, 1)
            start = time.time()
            until = drop.until = start + LOAD_SECONDS
            drop.session = session
            await asyncio.gather(
                faults(drop, session, own_database, env, start, tmp_path),
                anonymous(drop, session, until),
                hoarder(drop, session, hoarding, until),
                *(
                    client(drop, session, who, i, until)
                    for who in shoppers
                    for i in range(CLIENTS_PER_BUYER)
                ),
            )
            await asyncio.gather(*drop.follows)  # each ends within a second of the load
            await asyncio.sleep(0.5)  # what the servers still do for requests given up on
            everyone: dict[str | None, Buyer | None] = {None: None}
            everyone.update((who.name, who) for who in [*shoppers, hoarding])
            await settle(drop, session, everyone)
            db = await snapshot(own_db)
            verdict = Verdict(drop, db)
            problems = verdict.run()
            report = await check(own_db)
    finally:
        for server in {id(s): s for s in started + running}.values():
            await asyncio.to_thread(server.stop)

    outcomes = Counter(exchange.label() for exchange in drop.exchanges)
    summary = (
        f"events {dict(drop.events)}; checked {dict(verdict.checked)}; "
        f"answers {dict(sorted(outcomes.items()))}"
    )
    assert not problems, f"{len(problems)} problem(s); {summary}\n" + "\n".join(problems[:20])
    assert report.ok, f"check: {report.problems}"
    offered = sum(row["status"] == "OFFERED" for row in db.entries.values())
    # The run did what it is for: every fault happened, and every rule was exercised.
    assert drop.events["servers killed"] == 1 and drop.events["pool connections terminated"], (
        summary
    )
    assert outcomes["reserve no answer"] > 0, summary
    for seen in (
        "PurchaseLimitExceeded",
        "TooManyPendingHolds",
        "BuyerRequired",
        "InsufficientStock",
    ):
        assert outcomes[f"reserve {seen}"] > 0, summary
    assert offered > 0 and outcomes["join WaitlistEntry"] > 0, summary
