"""Told vs held: what clients were told, checked against what the database holds.

Every concurrency and fault test records each answer its clients got (or did not get)
here, then asks `verify` whether the database agrees:

- every PENDING or CONFIRMED hold on the tested products is one some client was told
  about, or, only for a request that got an error or no answer at all and carried an
  idempotency key, one whose key matches (replaying the key recovers it). Anything else
  is an *orphan*: stock held that no shopper knows about, lost until it expires;
- every hold a client was told about exists with exactly the lines it was told, and its
  status agrees with what clients were told about it afterwards;
- per product, `reserved` equals the sum of its PENDING lines.

Answers are classified as a client would: a `Reservation` (held: its id and lines), a
typed refusal (a union member such as `InsufficientStock`: nothing held), an error (any
other answer: a 503 `BUSY` or `DATABASE_UNAVAILABLE`, a 500, bad JSON: nothing may be
held unless the request carried a key) or no answer (the connection broke or the client
gave up: likewise).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from tests.api.queries import CONFIRM, RELEASE, RESERVE

Line = tuple[str, int]  # (sku, quantity)

REFUSALS = frozenset(
    {"InsufficientStock", "ProductNotFound", "InvalidInput", "IdempotencyKeyReused"}
)
RETRIABLE_CODES = frozenset({"BUSY", "DATABASE_UNAVAILABLE"})
ENDED = frozenset({"CONFIRMED", "RELEASED", "EXPIRED"})
LISTED = 20  # orphans and problems shown in a message


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange as the client saw it. `status` None: no answer at all."""

    status: int | None
    body: Any
    headers: dict[str, str]
    seconds: float
    failure: str | None = None  # why there was no answer

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def error(self) -> dict[str, Any] | None:
        if isinstance(self.body, dict) and self.body.get("errors"):
            first = self.body["errors"][0]
            return first if isinstance(first, dict) else {"message": repr(first)}
        return None

    @property
    def code(self) -> str | None:
        return ((self.error or {}).get("extensions") or {}).get("code")

    @property
    def retriable(self) -> bool:
        return ((self.error or {}).get("extensions") or {}).get("retriable") is True

    def payload(self, field_name: str) -> dict[str, Any] | None:
        """The union member answered for `field_name`, if the answer carries one."""
        if not isinstance(self.body, dict):
            return None
        data = self.body.get("data")
        member = data.get(field_name) if isinstance(data, dict) else None
        return member if isinstance(member, dict) and "__typename" in member else None

    def label(self, field_name: str) -> str:
        """A short name for the outcome: held, refused:X, error:503:BUSY, no answer:X."""
        if not self.answered:
            return f"no answer:{self.failure}"
        member = self.payload(field_name)
        if member is not None and member["__typename"] == "Reservation":
            return "held" if field_name == "reserve" else f"told {member.get('status')}"
        if member is not None and self.status == 200 and not self.error:
            return f"refused:{member['__typename']}"
        return f"error:{self.status}:{self.code or 'no code'}"

    def is_error(self, field_name: str) -> bool:
        """Answered, but with neither a hold nor a typed refusal."""
        return self.answered and self.label(field_name).startswith("error:")

    def is_typed_retriable(self) -> bool:
        """The contract's "nothing done, try again": 503 BUSY or DATABASE_UNAVAILABLE."""
        return self.status == 503 and self.code in RETRIABLE_CODES and self.retriable

    def is_typed_busy(self) -> bool:
        """The contract's BUSY refusal: 503, code BUSY, retriable, with Retry-After."""
        return (
            self.status == 503
            and self.code == "BUSY"
            and self.retriable
            and "retry-after" in {k.lower() for k in self.headers}
        )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    query: str,
    variables: dict[str, Any],
    timeout: float | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """POST one GraphQL document to `url`/graphql; never raises for network trouble."""
    started = time.monotonic()
    client_timeout = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
    try:
        async with session.post(
            f"{url}/graphql",
            json={"query": query, "variables": variables},
            timeout=client_timeout,
            headers=headers,
        ) as response:
            raw = await response.read()
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = raw[:200]
            return Answer(response.status, body, dict(response.headers), time.monotonic() - started)
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        return Answer(None, None, {}, time.monotonic() - started, type(error).__name__)


def _lines(lines: Iterable[Any]) -> tuple[Line, ...]:
    """Lines as sorted (sku, quantity) pairs, from pairs or from GraphQL line objects."""
    pairs = [(line["sku"], line["quantity"]) if isinstance(line, dict) else line for line in lines]
    return tuple(sorted((str(sku), int(quantity)) for sku, quantity in pairs))


def _show(lines: Sequence[Line]) -> str:
    return ", ".join(f"{sku} x{quantity}" for sku, quantity in lines)


@dataclass
class Told:
    """A hold some client was told about, and what clients were told about it since."""

    id: str
    lines: tuple[Line, ...]
    key: str | None
    status: str | None = None  # the ended status a client was told, if any
    uncertain: set[str] = field(default_factory=set)  # targets of errored resolutions
    not_found: bool = False  # a client was told it does not exist


@dataclass(frozen=True)
class Orphan:
    id: str
    status: str
    key: str | None
    lines: tuple[Line, ...]
    created_at: Any
    expires_at: Any

    def __str__(self) -> str:
        return (
            f"{self.id} {self.status} key={self.key!r} [{_show(self.lines)}] "
            f"created {self.created_at:%H:%M:%S.%f} expires {self.expires_at:%H:%M:%S.%f}"
        )


@dataclass
class Verdict:
    """What `verify` found. `str(verdict)` is the message to fail with."""

    skus: list[str]
    outcomes: Counter[str]
    orphans: list[Orphan] = field(default_factory=list)
    recoverable: list[str] = field(default_factory=list)  # held under an uncertain key
    problems: list[str] = field(default_factory=list)
    untold_ended: int = 0  # holds no client was told about that ended (harmless)

    @property
    def orphan_count(self) -> int:
        return len(self.orphans)

    @property
    def orphan_units(self) -> Counter[str]:
        units: Counter[str] = Counter()
        for orphan in self.orphans:
            if orphan.status == "PENDING":
                units.update(dict(orphan.lines))
        return units

    @property
    def ok(self) -> bool:
        return not self.orphans and not self.problems

    def __str__(self) -> str:
        told = ", ".join(f"{label} {n}" for label, n in sorted(self.outcomes.items()))
        parts = [
            f"told vs held on {len(self.skus)} product(s): {self.orphan_count} orphan hold(s) "
            f"(pending units no client knows of: {dict(self.orphan_units) or 0}), "
            f"{len(self.problems)} other problem(s); {len(self.recoverable)} held under a "
            f"replayable key; {self.untold_ended} untold hold(s) already ended",
            f"  clients were told: {told or 'nothing'}",
        ]
        if self.orphans:
            parts.append(f"  orphans (held in the database, no client told; first {LISTED}):")
            parts += [f"    {orphan}" for orphan in self.orphans[:LISTED]]
        if self.problems:
            parts.append(f"  problems (first {LISTED}):")
            parts += [f"    {problem}" for problem in self.problems[:LISTED]]
        return "\n".join(parts)

    def raise_if_bad(self) -> None:
        if not self.ok:
            raise AssertionError(str(self))


# Every hold with a line on the products, or told about, with all of its lines.
HOLDS = """
SELECT r.id::text AS id, r.status::text AS status, r.idempotency_key AS key,
       r.created_at, r.expires_at,
       array_agg(p.sku ORDER BY p.sku) FILTER (WHERE p.sku IS NOT NULL) AS skus,
       array_agg(l.quantity ORDER BY p.sku) FILTER (WHERE p.sku IS NOT NULL) AS quantities
FROM reservation r
LEFT JOIN reservation_line l ON l.reservation_id = r.id
LEFT JOIN product p ON p.id = l.product_id
WHERE r.id = any($2::uuid[])
   OR r.id IN (SELECT l2.reservation_id FROM reservation_line l2
               JOIN product p2 ON p2.id = l2.product_id WHERE p2.sku = any($1::text[]))
GROUP BY r.id
"""

PER_PRODUCT = """
SELECT p.sku, p.quantity, p.reserved,
       coalesce(sum(l.quantity) FILTER (WHERE r.status = 'PENDING'), 0) AS pending
FROM product p
LEFT JOIN reservation_line l ON l.product_id = p.id
LEFT JOIN reservation r ON r.id = l.reservation_id
WHERE p.sku = any($1::text[])
GROUP BY p.sku, p.quantity, p.reserved
"""


class Oracle:
    """Records what clients were told; `verify` compares it with the database."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.told: dict[str, Told] = {}
        self.outcomes: Counter[str] = Counter()
        # Keys of requests that got an error or no answer: their hold may exist and be
        # recovered by replaying the key, with these lines.
        self.uncertain_keys: dict[str, tuple[Line, ...]] = {}
        self.problems: list[str] = []  # contract breaches seen in answers as they came
        # Errors that are not the typed, retriable 503 (a 500, an untyped error, bad JSON):
        # the client cannot tell whether anything was done.
        self.untyped_errors: Counter[str] = Counter()

    # -- recording -----------------------------------------------------------------

    def record_reserve(self, lines: Iterable[Any], key: str | None, answer: Answer) -> str | None:
        """Record a reserve's answer; the id of the hold it was told about, if any."""
        requested = _lines(lines)
        self.outcomes[answer.label("reserve")] += 1
        if answer.is_error("reserve") and not answer.is_typed_retriable():
            self.untyped_errors[f"reserve {answer.label('reserve')}"] += 1
        member = answer.payload("reserve")
        if member is not None and member["__typename"] == "Reservation" and member.get("id"):
            rid = str(member["id"])
            told_lines = _lines(member.get("lines") or [])
            if told_lines != requested:
                self.problems.append(
                    f"reserve of [{_show(requested)}] told {rid} with lines [{_show(told_lines)}]"
                )
            if key is not None:
                self.uncertain_keys.pop(key, None)  # recovered
            previous = self.told.get(rid)
            if previous is None:
                previous = self.told[rid] = Told(rid, told_lines, key)
                if member.get("status") in ENDED:  # a replay may find its hold ended
                    previous.status = str(member["status"])
            elif key is None or previous.key != key:
                self.problems.append(
                    f"{rid} told to two requests (keys {previous.key!r} and {key!r})"
                )
            return rid
        refused = member is not None and answer.status == 200 and not answer.error
        if refused and member is not None and member["__typename"] not in REFUSALS:
            self.problems.append(f"reserve of [{_show(requested)}] answered {member!r:.200}")
        if key is not None and not refused:
            self.uncertain_keys[key] = requested
        return None

    def record_resolve(self, action: str, rid: str, answer: Answer) -> None:
        """Record a confirm's or release's answer about a hold a client was told about."""
        target = {"confirm": "CONFIRMED", "release": "RELEASED"}[action]
        told = self.told.get(rid)
        self.outcomes[f"{action} {answer.label(action)}"] += 1
        if answer.is_error(action) and not answer.is_typed_retriable():
            self.untyped_errors[f"{action} {answer.label(action)}"] += 1
        if told is None:
            self.problems.append(f"{action} of {rid}, a hold no client was told about")
            return
        member = answer.payload(action)
        kind = member["__typename"] if member is not None else None
        if (
            member is not None
            and kind in ("Reservation", "ReservationNotPending")
            and member.get("status")
        ):
            status = str(member["status"])
            if status == "PENDING":
                self.problems.append(f"{action} of {rid} answered it still PENDING")
            elif told.status is not None and told.status != status:
                self.problems.append(
                    f"{rid} told {told.status}, then {status}: a hold ends only once"
                )
            else:
                told.status = status
        elif kind == "ReservationNotFound":
            told.not_found = True
            self.problems.append(f"{action} of {rid} answered ReservationNotFound")
        else:
            told.uncertain.add(target)  # error or no answer: it may or may not have ended

    # -- talking to a server ---------------------------------------------------------

    async def reserve(
        self,
        session: aiohttp.ClientSession,
        url: str,
        lines: Sequence[Line],
        *,
        ttl: int | None = None,
        key: str | None = None,
        timeout: float | None = None,
    ) -> tuple[Answer, str | None]:
        """Reserve `lines` ((sku, quantity) pairs); the answer and the told hold's id."""
        variables: dict[str, Any] = {"lines": [{"sku": s, "quantity": q} for s, q in lines]}
        if ttl is not None:
            variables["ttl"] = ttl
        if key is not None:
            variables["key"] = key
        answer = await post(session, url, RESERVE, variables, timeout)
        return answer, self.record_reserve(lines, key, answer)

    async def release(
        self, session: aiohttp.ClientSession, url: str, rid: str, timeout: float | None = None
    ) -> Answer:
        answer = await post(session, url, RELEASE, {"id": rid}, timeout)
        self.record_resolve("release", rid, answer)
        return answer

    async def confirm(
        self, session: aiohttp.ClientSession, url: str, rid: str, timeout: float | None = None
    ) -> Answer:
        answer = await post(session, url, CONFIRM, {"id": rid}, timeout)
        self.record_resolve("confirm", rid, answer)
        return answer

    async def replay_uncertain_keys(
        self,
        session: aiohttp.ClientSession,
        url: str,
        db: asyncpg.Connection,
        timeout: float = 10,
    ) -> int:
        """Replay the key of every request that got an error or no answer.

        A hold already made under the key must come back (same id, same lines); otherwise
        the replay may hold anew. Returns how many keys were replayed.
        """
        pending = dict(self.uncertain_keys)
        rows = await db.fetch(
            "SELECT idempotency_key, id::text FROM reservation WHERE idempotency_key = any($1)",
            list(pending),
        )
        existing = {r["idempotency_key"]: r["id"] for r in rows}
        gate = asyncio.Semaphore(16)

        async def replay(key: str, lines: tuple[Line, ...]) -> None:
            async with gate:
                answer, rid = await self.reserve(session, url, lines, key=key, timeout=timeout)
            if key in existing and rid != existing[key]:
                self.problems.append(
                    f"replaying key {key!r} answered {answer.label('reserve')} {rid}, "
                    f"but {existing[key]} is held under it"
                )

        await asyncio.gather(*(replay(key, lines) for key, lines in pending.items()))
        return len(pending)

    # -- what clients believe --------------------------------------------------------

    @property
    def held_ids(self) -> list[str]:
        return list(self.told)

    def told_holding_units(self, sku: str) -> int:
        """Units of `sku` in holds clients were told about and never told had ended."""
        return sum(
            quantity
            for told in self.told.values()
            if told.status is None
            for line_sku, quantity in told.lines
            if line_sku == sku
        )

    def count(self, prefix: str) -> int:
        return sum(n for label, n in self.outcomes.items() if label.startswith(prefix))

    # -- the comparison ---------------------------------------------------------------

    async def verify(self, db: asyncpg.Connection, skus: Iterable[str]) -> Verdict:
        """Compare what clients were told with what the database holds for `skus`."""
        skus = sorted(set(skus))
        verdict = Verdict(skus, Counter(self.outcomes), problems=list(self.problems))
        ids = []
        for rid in self.told:
            try:
                ids.append(uuid.UUID(rid))
            except ValueError:
                verdict.problems.append(f"told id {rid!r} is not a reservation id")
        async with db.transaction(isolation="repeatable_read", readonly=True):
            holds = await db.fetch(HOLDS, skus, ids)
            products = await db.fetch(PER_PRODUCT, skus)

        found = {}
        for row in holds:
            found[row["id"]] = row
            lines = tuple(zip(row["skus"] or [], row["quantities"] or [], strict=True))
            if row["id"] in self.told:
                continue
            if row["status"] not in ("PENDING", "CONFIRMED"):
                verdict.untold_ended += 1
            elif row["key"] is not None and row["key"] in self.uncertain_keys:
                verdict.recoverable.append(row["id"])
            else:
                verdict.orphans.append(
                    Orphan(
                        row["id"],
                        row["status"],
                        row["key"],
                        tuple(sorted(lines)),
                        row["created_at"],
                        row["expires_at"],
                    )
                )
        verdict.orphans.sort(key=lambda orphan: orphan.created_at)

        for rid, told in self.told.items():
            held = found.get(rid)
            if held is None:
                verdict.problems.append(
                    f"told held {rid} [{_show(told.lines)}]: not in the database"
                )
                continue
            lines = tuple(sorted(zip(held["skus"] or [], held["quantities"] or [], strict=True)))
            if lines != told.lines:
                verdict.problems.append(
                    f"told held {rid} [{_show(told.lines)}]: the database holds [{_show(lines)}]"
                )
            status = held["status"]
            if told.status is not None:
                allowed = {told.status}
                said = f"told {told.status}"
            else:
                allowed = {"PENDING", "EXPIRED"} | told.uncertain
                said = (
                    f"{'/'.join(sorted(told.uncertain))} errored"
                    if told.uncertain
                    else "never told it ended"
                )
            if status not in allowed:
                verdict.problems.append(
                    f"told held {rid} [{_show(told.lines)}], {said}: the database says {status}"
                )

        seen = set()
        for row in products:
            seen.add(row["sku"])
            if row["reserved"] != row["pending"]:
                verdict.problems.append(
                    f"{row['sku']}: reserved {row['reserved']} but its PENDING lines sum to "
                    f"{row['pending']}"
                )
        verdict.problems += [f"{sku}: no such product" for sku in skus if sku not in seen]
        return verdict
