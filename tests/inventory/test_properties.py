"""A Hypothesis state machine: the inventory service against an in-memory model.

Random sequences of reserve (carts, idempotency keys, replays), confirm, release, expiry
(holds made due by SQL, then swept), stock adjustments and product creation. After every
step the database must agree with the model, and with itself (`reconcile`). The machine
runs twice: reserves in their own transactions, and through the coalescer.

Hypothesis' stateful testing is synchronous, so each run owns one event loop and drives
the service with `run_until_complete`. Each run gets its own database, without a sweeper:
the machine decides when holds expire, by moving their expiry into the past with SQL
rather than by sleeping. Examples share that database, each with its own skus and
idempotency keys (a uuid prefix), so `reconcile`, which checks the whole database, must
pass after every step of every example.

Needs `hypothesis>=6`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from inventory_graphql.config import Settings
from inventory_graphql.inventory.models import (
    HoldLimitReached,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidInput,
    LineRequest,
    Product,
    ProductExists,
    ProductNotFound,
    ProductOutcome,
    Reservation,
    ReservationLine,
    ReservationNotFound,
    ReservationNotPending,
    ReservationStatus,
    ReserveOutcome,
    ResolveOutcome,
)
from inventory_graphql.inventory.reconcile import reconcile
from inventory_graphql.inventory.reservations import Reservations
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.inventory.sweeper import Sweeper
from inventory_graphql.inventory.validation import MAX_STOCK
from tests.support.database import create_database

T = TypeVar("T")
NewHolds = str | MultipleResults[str]  # what a rule that may hold something returns

PENDING = ReservationStatus.PENDING
CONFIRMED = ReservationStatus.CONFIRMED
RELEASED = ReservationStatus.RELEASED
EXPIRED = ReservationStatus.EXPIRED

SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    # Same examples on every run (CI must not turn red on a new random draw), and no
    # example database written into the checkout.
    derandomize=True,
    database=None,
    # Every step is a few database round trips: slow, by Hypothesis' standards.
    suppress_health_check=[HealthCheck.too_slow],
)

# Three products exist from the start; slot 3 is a sku that createProduct may add later,
# so reserving or adjusting it first answers ProductNotFound.
SLOTS = 4
INITIAL_SLOTS = 3
KEY_SLOTS = 3
DEFAULT_TTL = Settings().hold_ttl_seconds
# Long enough that no hold expires by the clock during an example: only the machine makes
# holds due, by SQL.
TTLS = st.sampled_from([None, 300, 3600])
# Small stock and small lines, so that holds and shortages are both frequent; the sku
# that may not exist is drawn less often, or most carts would answer ProductNotFound.
QUANTITIES = st.integers(0, 10)
CART = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 0, 1, 2, 3]), st.integers(1, 3)),
    min_size=1,
    max_size=3,
    unique_by=lambda line: line[0],
)
DELTAS = st.integers(-6, 6) | st.sampled_from([MAX_STOCK, -MAX_STOCK])
# Or a delta that takes quantity to exactly `reserved` (allowed) or just below (refused).
TO_RESERVED = st.sampled_from([None, 0, -1])
# Batches: mostly single-line requests on few products, so that a refused large request
# followed by a smaller one that still fits (granted in FIFO order) is common.
SINGLE = st.tuples(st.sampled_from([0, 0, 1, 3]), st.integers(1, 3)).map(lambda line: [line])
BATCH = st.lists(SINGLE | CART, min_size=2, max_size=6)
# Holds made due are left for confirm/release to find until a sweep: `reconcile` must
# not call that overdue. Our own check (`past expiry` == `due`) is exact instead.
OVERDUE_GRACE_SECONDS = 3600
REASON = "property test"

# Bad requests, one rule for all so they do not crowd out the rest: invalid reserves
# (named by the InvalidInput field they answer) and holds that do not exist.
INVALID_RESERVES = ["lines", "lines[1].sku", "lines[0].sku", "lines[0].quantity", "ttlSeconds"]
INVALID_RESERVES += ["idempotencyKey"]
UNKNOWN_HOLDS = ["confirm unknown", "release unknown", "confirm malformed", "release malformed"]


# What the checks read, straight from the tables (not through the service).
PRODUCTS = """
SELECT sku, quantity, reserved, quantity - reserved AS available, version
FROM product WHERE sku = any($1::text[])
"""
HOLDS = """
SELECT r.id::text, r.status::text, r.expires_at, r.resolved_at,
       r.expires_at <= now() AS past_expiry,
       (SELECT array_agg(p.sku || ':' || l.quantity ORDER BY p.sku)
        FROM reservation_line l JOIN product p ON p.id = l.product_id
        WHERE l.reservation_id = r.id) AS lines
FROM reservation r WHERE r.id = any($1::uuid[])
"""
# Every hold on this example's products, whoever made it: each must be one the service
# told a caller about (VOID request ids have no lines, and hold nothing).
ALL_HOLDS = """
SELECT DISTINCT l.reservation_id::text AS id FROM reservation_line l
JOIN product p ON p.id = l.product_id WHERE p.sku = any($1::text[])
"""

MOVEMENTS = """
SELECT reservation_id::text AS id, kind::text, count(*) AS n FROM stock_movement
WHERE reservation_id = any($1::uuid[]) GROUP BY 1, 2
"""
MAKE_DUE = """
UPDATE reservation SET expires_at = created_at + $2 * interval '1 microsecond'
WHERE id = $1 AND status = 'PENDING' RETURNING expires_at
"""
DUE = "SELECT count(*) FROM reservation WHERE status = 'PENDING' AND expires_at <= now()"


# The model.


@dataclass
class Stock:
    quantity: int
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.quantity - self.reserved


@dataclass
class Hold:
    id: str
    lines: dict[str, int]
    created_at: datetime
    expires_at: datetime
    status: ReservationStatus = PENDING
    due: bool = False  # past expiry (moved there by SQL) and not yet expired by anyone
    resolved_at: datetime | None = None  # once ended: as first seen, must never change
    # Per sku: units bought, and units given back (partly, by release, or by expiry).
    confirmed: Counter[str] = field(default_factory=Counter)
    released: Counter[str] = field(default_factory=Counter)
    movements: Counter[str] = field(default_factory=Counter)  # ledger rows, by kind

    def held(self, sku: str) -> int:
        return self.lines[sku] - self.confirmed[sku] - self.released[sku]

    def as_reservation(self) -> Reservation:
        """What the service must answer for this hold as it is now."""
        return Reservation(
            id=self.id,
            status=self.status,
            lines=tuple(
                ReservationLine(sku, n, self.confirmed[sku], self.released[sku])
                for sku, n in sorted(self.lines.items())
            ),
            created_at=self.created_at,
            expires_at=self.expires_at,
            resolved_at=self.resolved_at,
        )


Shortage = ProductNotFound | InsufficientStock


def first_shortage(lines: Sequence[LineRequest], available: dict[str, int]) -> Shortage | None:
    """The first line, in sku order (the order products are locked in), that `available`
    cannot cover."""
    for line in sorted(lines, key=lambda line: line.sku):
        if line.sku not in available:
            return ProductNotFound(line.sku)
        if available[line.sku] < line.quantity:
            return InsufficientStock(line.sku, line.quantity, available[line.sku])
    return None


def same_lines(hold: Hold, lines: Sequence[LineRequest]) -> bool:
    return Counter(hold.lines.items()) == Counter((line.sku, line.quantity) for line in lines)


class Model:
    def __init__(self) -> None:
        self.products: dict[str, Stock] = {}
        self.holds: dict[str, Hold] = {}
        self.keys: dict[str, str] = {}  # idempotency key -> hold id, for holds made with it

    def available(self) -> dict[str, int]:
        return {sku: stock.available for sku, stock in self.products.items()}

    def pending(self) -> list[Hold]:
        return [hold for hold in self.holds.values() if hold.status is PENDING]

    def due(self) -> list[Hold]:
        return [hold for hold in self.pending() if hold.due]

    def add_hold(self, reservation: Reservation, key: str | None) -> Hold:
        hold = Hold(
            id=reservation.id,
            lines={line.sku: line.quantity for line in reservation.lines},
            created_at=reservation.created_at,
            expires_at=reservation.expires_at,
        )
        assert hold.id not in self.holds, "a new hold reused an id"
        self.holds[hold.id] = hold
        for sku, n in hold.lines.items():
            self.products[sku].reserved += n
        hold.movements["RESERVE"] = len(hold.lines)
        if key is not None:
            self.keys[key] = hold.id
        return hold

    def end(self, hold: Hold, status: ReservationStatus, rest_ships: bool | None = None) -> None:
        """A hold leaves PENDING, exactly once: the units it still holds return (or ship,
        on a full confirm; a partial confirm gives back the rest)."""
        assert hold.status is PENDING and status is not PENDING
        hold.status, hold.due = status, False
        ships = status is CONFIRMED if rest_ships is None else rest_ships
        kind = "CONFIRM" if ships else "EXPIRE" if status is EXPIRED else "RELEASE"
        self.part(hold, {sku: hold.held(sku) for sku in hold.lines}, ships, kind)

    def part(self, hold: Hold, units: dict[str, int], ships: bool, kind: str) -> None:
        """Units leave a hold: shipped, or back to the stock. One ledger row per line."""
        for sku, n in units.items():
            if n == 0:
                continue
            assert 0 < n <= hold.held(sku)
            self.products[sku].reserved -= n
            if ships:
                self.products[sku].quantity -= n
                hold.confirmed[sku] += n
            else:
                hold.released[sku] += n
            hold.movements[kind] += 1


# The harness: one loop, database, pool and service per run, shared by its examples.


class Harness:
    """Owns the event loop that every async call runs on, and the database under test.

    Examples share one database (a fresh one per example would cost more than the
    example), each with its own skus. After an example that left it broken (only a bug
    does that), the next example gets a fresh database, so that shrinking replays each
    candidate on a sound one instead of failing them all on the same old damage.
    """

    def __init__(self, postgres_url: str, coalesce: bool) -> None:
        self.postgres_url = postgres_url
        self.coalesce = coalesce
        self.loop = asyncio.new_event_loop()
        self.databases: list[str] = []
        self._stack: contextlib.AsyncExitStack | None = None
        self.dirty = True  # no database yet

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def before_example(self) -> None:
        if self.dirty:
            self.run(self._open())
            self.dirty = False

    def after_example(self) -> None:
        self.dirty = True
        # The example's own steps report what is wrong; this only cleans up after them.
        with contextlib.suppress(Exception):
            self.dirty = not self.run(self._tidy())

    async def _open(self) -> None:
        await self._close()
        self._stack = contextlib.AsyncExitStack()
        url = await create_database(self.postgres_url)
        self.databases.append(url)
        self.pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        self._stack.push_async_callback(self.pool.close)
        # The checks' own connection: never one the service could be waiting for.
        self.db = await asyncpg.connect(url)
        self._stack.push_async_callback(self.db.close)
        self.service = InventoryService(self.pool, Settings(coalesce_reservations=self.coalesce))
        # No sweeper: the rules decide when holds expire.
        await self._stack.enter_async_context(self.service.running(sweep=False))

    async def _tidy(self) -> bool:
        """Leave nothing due behind (later examples count what a sweep expires); is the
        database still sound?"""
        await Sweeper(Reservations(self.pool, 600), interval=0, batch_size=500).sweep_once()
        due = await self.db.fetchval(DUE)
        report = await reconcile(self.db, overdue_grace_seconds=OVERDUE_GRACE_SECONDS)
        return due == 0 and report.ok

    async def _close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    async def _drop_databases(self) -> None:
        conn = await asyncpg.connect(self.postgres_url)
        try:
            for url in self.databases:
                name = urlsplit(url).path.lstrip("/")
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        try:
            self.run(self._close())
            self.run(self._drop_databases())
        finally:
            self.loop.close()


class InventoryMachine(RuleBasedStateMachine):
    harness: Harness  # set by the test on a subclass

    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.harness.before_example()
        self.prefix = f"PT{uuid.uuid4().hex[:10]}"
        self.model = Model()
        self.service = self.harness.service
        self.db = self.harness.db
        # Per sku: (quantity, reserved, version) at the last check.
        self.seen: dict[str, tuple[int, int, int]] = {}
        self.moved: set[str] = set()  # skus changed more than once in the last step
        self.made_due = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.harness.run(coroutine)

    def sku(self, slot: int) -> str:
        return f"{self.prefix}-{slot}"

    def key(self, slot: int) -> str:
        return f"{self.prefix}-key-{slot}"

    def lines(self, cart: Sequence[tuple[int, int]]) -> list[LineRequest]:
        return [LineRequest(self.sku(slot), n) for slot, n in cart]

    def teardown(self) -> None:
        self.harness.after_example()

    # Products.

    @initialize(
        target=holds,
        quantities=st.lists(QUANTITIES, min_size=INITIAL_SLOTS, max_size=INITIAL_SLOTS),
        carts=st.lists(st.tuples(CART, st.booleans()), max_size=4),
    )
    def start(
        self, quantities: list[int], carts: list[tuple[list[tuple[int, int]], bool]]
    ) -> MultipleResults[str]:
        """Products, and a few holds: swarm testing turns `reserve` off in some examples,
        and the rules that end holds should still have some to work on there."""
        for slot, quantity in enumerate(quantities):
            assert isinstance(self._create(slot, quantity), Product)
        held = [self.reserve(cart, None, None, short) for cart, short in carts]
        return multiple(*(hold_id for hold_id in held if isinstance(hold_id, str)))

    @rule(slot=st.integers(0, SLOTS - 1), quantity=st.integers(-1, 8))
    def create_product(self, slot: int, quantity: int) -> None:
        self._create(slot, quantity)

    def _create(self, slot: int, quantity: int) -> ProductOutcome:
        sku, name = self.sku(slot), f"Property test product {slot}"
        outcome = self.run(self.service.create_product(sku, name, quantity))
        if quantity < 0:
            assert isinstance(outcome, InvalidInput) and outcome.field == "quantity", outcome
        elif sku in self.model.products:
            assert outcome == ProductExists(sku)
        else:
            assert isinstance(outcome, Product), outcome
            assert outcome == Product(sku, name, quantity, 0, 1, outcome.updated_at)
            self.model.products[sku] = Stock(quantity)
            self.seen[sku] = (quantity, 0, 1)
        return outcome

    @rule(slot=st.integers(0, SLOTS - 1), delta=DELTAS, to_reserved=TO_RESERVED)
    def adjust_stock(self, slot: int, delta: int, to_reserved: int | None) -> None:
        sku = self.sku(slot)
        stock = self.model.products.get(sku)
        if stock is not None and to_reserved is not None:
            delta = stock.reserved - stock.quantity + to_reserved
        outcome = self.run(self.service.adjust_stock(sku, delta, REASON))
        if delta == 0 or abs(delta) > MAX_STOCK:
            assert isinstance(outcome, InvalidInput) and outcome.field == "delta", outcome
        elif stock is None:
            assert outcome == ProductNotFound(sku)
        elif stock.quantity + delta < stock.reserved:
            assert outcome == InvalidInput(
                "delta",
                f"would leave quantity {stock.quantity + delta} below the "
                f"{stock.reserved} reserved",
            )
        elif stock.quantity + delta > MAX_STOCK:
            assert outcome == InvalidInput("delta", f"would take quantity above {MAX_STOCK:,}")
        else:
            stock.quantity += delta
            assert isinstance(outcome, Product), outcome
            assert (outcome.sku, outcome.quantity, outcome.reserved) == (
                sku,
                stock.quantity,
                stock.reserved,
            )

    # Reserving.

    @rule(
        target=holds,
        cart=CART,
        ttl=TTLS,
        key_slot=st.none() | st.integers(0, KEY_SLOTS - 1),
        short=st.booleans(),
    )
    def reserve(
        self, cart: list[tuple[int, int]], ttl: int | None, key_slot: int | None, short: bool
    ) -> NewHolds:
        """`short`: a new hold is moved past its expiry at once, as if its ttl were tiny."""
        key = None if key_slot is None else self.key(key_slot)
        held = self._reserve(self.lines(cart), ttl, key)
        if short and isinstance(held, str):
            self._make_due(self.model.holds[held])
        return held

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data(), lines_as=st.sampled_from(["reversed", "shuffled", "other"]), ttl=TTLS)
    def reuse_key(self, data: st.DataObject, lines_as: str, ttl: int | None) -> None:
        """A used key again: with the same lines in any order it answers the original hold
        as it is now; with other lines, IdempotencyKeyReused. Nothing new is held."""
        key = data.draw(st.sampled_from(sorted(self.model.keys)), label="key")
        hold = self.model.holds[self.model.keys[key]]
        held = [LineRequest(sku, n) for sku, n in hold.lines.items()]  # in sku order
        if lines_as == "reversed":
            lines = held[::-1]
        elif lines_as == "shuffled":
            lines = data.draw(st.permutations(held), label="lines")
        else:
            lines = self.lines(data.draw(CART, label="cart"))
        self._reserve(lines, ttl, key)

    def _reserve(self, lines: list[LineRequest], ttl: int | None, key: str | None) -> NewHolds:
        outcome = self.run(self.service.reserve(lines, ttl, key))
        if key is not None and key in self.model.keys:
            hold = self.model.holds[self.model.keys[key]]
            if same_lines(hold, lines):
                assert outcome == hold.as_reservation()
            else:
                assert outcome == IdempotencyKeyReused(key)
            return multiple()  # nothing new was held
        if shortage := first_shortage(lines, self.model.available()):
            assert outcome == shortage
            return multiple()
        return self._new_hold(outcome, lines, ttl, key).id

    def _new_hold(
        self,
        outcome: ReserveOutcome,
        lines: Sequence[LineRequest],
        ttl: int | None,
        key: str | None,
    ) -> Hold:
        assert isinstance(outcome, Reservation), outcome
        assert outcome.status is PENDING and outcome.resolved_at is None
        # Lines come back in sku order, whatever the caller's order.
        assert outcome.lines == tuple(
            ReservationLine(line.sku, line.quantity) for line in sorted(lines, key=lambda x: x.sku)
        )
        # Never past the hold cap from creation, whatever ttl was asked for.
        ttl_seconds = min(DEFAULT_TTL if ttl is None else ttl, Settings().max_hold_seconds)
        assert outcome.expires_at - outcome.created_at == timedelta(seconds=ttl_seconds)
        return self.model.add_hold(outcome, key)

    @precondition(lambda self: self.harness.coalesce)
    @rule(target=holds, carts=BATCH, ttl=TTLS)
    def reserve_together(
        self, carts: list[list[tuple[int, int]]], ttl: int | None
    ) -> MultipleResults[str]:
        """Requests queued in one tick form one batch: granted as if one after another, in
        queue order. A refused cart says why as the stock stood at the batch's start when
        it could not fit even then (refused for one read, before any lock), else as the
        stock stood at its turn; a refused single line, as it stood after the grant pass
        that refused it (at or after its turn, at or before the batch's end)."""
        requests = [self.lines(cart) for cart in carts]
        available = self.model.available()
        at_start = dict(available)
        granted, at_turn = [], []
        for lines in requests:
            at_turn.append(dict(available))
            fits = first_shortage(lines, available) is None
            granted.append(fits)
            for line in lines if fits else ():
                available[line.sku] -= line.quantity
        batches = self.service.stats().batches

        async def together() -> list[ReserveOutcome]:
            return await asyncio.gather(*(self.service.reserve(lines, ttl) for lines in requests))

        outcomes = self.run(together())
        assert self.service.stats().batches == batches + 1, "the requests were not one batch"
        new = []
        for lines, fits, before, outcome in zip(requests, granted, at_turn, outcomes, strict=True):
            if fits:
                new.append(self._new_hold(outcome, lines, ttl, None).id)
            elif len(lines) > 1:
                told = first_shortage(lines, at_start) or first_shortage(lines, before)
                assert outcome == told
            else:
                self._refused_single(lines[0], outcome, at_start, available)
        return multiple(*new)

    async def _together(
        self, requests: list[list[LineRequest]], ttl: int | None
    ) -> list[ReserveOutcome]:
        return await asyncio.gather(*(self.service.reserve(lines, ttl) for lines in requests))

    def _refused_single(
        self,
        line: LineRequest,
        outcome: ReserveOutcome,
        before: dict[str, int],
        after: dict[str, int],
    ) -> None:
        if line.sku not in before:
            assert outcome == ProductNotFound(line.sku)
            return
        assert isinstance(outcome, InsufficientStock), outcome
        assert (outcome.sku, outcome.requested) == (line.sku, line.quantity)
        assert after[line.sku] <= outcome.available <= before[line.sku], outcome
        assert outcome.available < line.quantity, "a refusal must be true when it is told"

    @precondition(lambda self: self.harness.coalesce and self.model.products)
    @rule(
        target=holds,
        carts=st.lists(SINGLE, min_size=2, max_size=6),
        ttl=TTLS,
        move=st.sampled_from(["restock", "release"]),
        data=st.data(),
    )
    def stock_moves_between_passes(
        self,
        carts: list[list[tuple[int, int]]],
        ttl: int | None,
        move: str,
        data: st.DataObject,
    ) -> MultipleResults[str]:
        """A batch of single lines while another writer commits between its grant passes
        (a restock, or a hold released): whatever each caller is told is what the database
        holds, and no hold is made that nobody was told of."""
        requests = [self.lines(cart) for cart in carts]
        pending = [hold for hold in self.model.pending() if not hold.due]
        moving: Coroutine[Any, Any, object]  # a release's answer, or a restock's
        if move == "release" and pending:
            hold = data.draw(st.sampled_from(pending), label="released")
            moving = self.service.release(hold.id)
        else:
            sku = data.draw(st.sampled_from(sorted(self.model.products)), label="restocked")
            stock, delta = self.model.products[sku], data.draw(st.integers(1, 4), label="delta")
            moving = self.service.adjust_stock(sku, delta, REASON)
            hold = None
        # The move must land between two passes of one batch: hook the service's coalescer.
        coalescer = self.service._coalescer
        assert coalescer is not None
        passes = coalescer._fetch_alone
        moved: list[Any] = []

        async def pass_then_move(query: str, *args: object) -> list[asyncpg.Record]:
            rows = await passes(query, *args)
            if not moved:  # after the first pass has committed, before the next one
                moved.append(await moving)
            return rows

        coalescer._fetch_alone = pass_then_move  # type: ignore[method-assign]
        try:
            outcomes = self.run(self._together(requests, ttl))
        finally:
            del coalescer._fetch_alone
        if not moved:  # no pass ran (nothing existed to grant): the move still happens
            moved.append(self.run(moving))
        self.moved.update(line.sku for lines in requests for line in lines)
        if hold is not None:
            self._ended_now(hold, RELEASED, moved[0])
        elif isinstance(moved[0], Product):
            stock.quantity += delta
        else:
            assert stock.quantity + delta > MAX_STOCK, moved[0]
        new = []
        for lines, outcome in zip(requests, outcomes, strict=True):
            line = lines[0]
            if isinstance(outcome, Reservation):
                new.append(self._new_hold(outcome, lines, ttl, None).id)
            elif line.sku not in self.model.products:
                assert outcome == ProductNotFound(line.sku)
            else:
                assert isinstance(outcome, InsufficientStock), outcome
                assert outcome.available < line.quantity, "a refusal must be true when told"
        return multiple(*new)

    @rule(case=st.sampled_from(INVALID_RESERVES + UNKNOWN_HOLDS), slot=st.integers(0, SLOTS - 1))
    def bad_request(self, case: str, slot: int) -> None:
        """Answered with a typed error, changing nothing."""
        if case in UNKNOWN_HOLDS:
            action, kind = case.split()
            raw = str(uuid.uuid4()) if kind == "unknown" else "not-a-uuid"
            resolve = self.service.confirm if action == "confirm" else self.service.release
            assert self.run(resolve(raw)) == ReservationNotFound(raw)
            return
        sku, ttl, key = self.sku(slot), None, None
        lines = [LineRequest(sku, 1)]
        if case == "lines":
            lines = []
        elif case == "lines[1].sku":
            lines = [LineRequest(sku, 1), LineRequest(sku, 2)]
        elif case == "lines[0].sku":
            lines = [LineRequest("not a sku", 1)]
        elif case == "lines[0].quantity":
            lines = [LineRequest(sku, 0)]
        elif case == "ttlSeconds":
            ttl = 0
        else:
            key = ""
        outcome = self.run(self.service.reserve(lines, ttl, key))
        assert isinstance(outcome, InvalidInput) and outcome.field == case, outcome

    # Ending holds.

    @rule(hold_id=holds)
    def confirm(self, hold_id: str) -> None:
        hold = self.model.holds[hold_id]
        outcome = self.run(self.service.confirm(hold_id))
        if hold.status is PENDING and not hold.due:
            self._ended_now(hold, CONFIRMED, outcome)
            assert outcome == hold.as_reservation()
        elif hold.status is PENDING:
            # Past expiry but not yet swept: confirm expires it instead, and says so.
            self.model.end(hold, EXPIRED)
            assert outcome == ReservationNotPending(hold_id, EXPIRED)
        elif hold.status is CONFIRMED:
            assert outcome == hold.as_reservation()  # a retried confirm is safe
        else:
            assert outcome == ReservationNotPending(hold_id, hold.status)

    @rule(hold_id=holds)
    def release(self, hold_id: str) -> None:
        hold = self.model.holds[hold_id]
        outcome = self.run(self.service.release(hold_id))
        if hold.status is PENDING:
            # Past expiry but not yet swept: release expires it, and answers it.
            self._ended_now(hold, EXPIRED if hold.due else RELEASED, outcome)
            assert outcome == hold.as_reservation()
        elif hold.status in (RELEASED, EXPIRED):
            assert outcome == hold.as_reservation()
        else:
            assert outcome == ReservationNotPending(hold_id, hold.status)

    # Hold control: extend, partial confirm, partial release.

    @rule(hold_id=holds, ttl=st.sampled_from([1, 60, 3600]))
    def extend(self, hold_id: str, ttl: int) -> None:
        hold = self.model.holds[hold_id]
        outcome = self.run(self.service.extend(hold_id, ttl))
        cap = hold.created_at + timedelta(seconds=Settings().max_hold_seconds)
        if hold.status is not PENDING:
            assert outcome == ReservationNotPending(hold_id, hold.status)
        elif hold.due:
            self.model.end(hold, EXPIRED)
            assert outcome == ReservationNotPending(hold_id, EXPIRED)
        elif ttl == 3600:
            # Past the cap (an example runs for much less than the cap): refused as it is.
            assert outcome == HoldLimitReached(hold_id, cap)
        else:
            assert isinstance(outcome, Reservation), outcome
            # Never moved back; moved at most to the cap.
            assert (
                outcome.expires_at == hold.expires_at or hold.expires_at < outcome.expires_at <= cap
            )
            hold.expires_at = outcome.expires_at
            assert outcome == hold.as_reservation()

    @precondition(lambda self: self.model.pending())
    @rule(data=st.data(), confirming=st.booleans())
    def resolve_part_of_pending(self, data: st.DataObject, confirming: bool) -> None:
        """Most holds in the bundle have ended: this one picks a pending hold."""
        pending = [hold.id for hold in self.model.pending()]  # in creation order: ids are random
        self._resolve_part(data.draw(st.sampled_from(pending), label="hold"), data, confirming)

    @precondition(lambda self: self.model.pending())
    @rule(data=st.data(), ttl=st.sampled_from([1, 60, 3600]))
    def extend_pending(self, data: st.DataObject, ttl: int) -> None:
        pending = [hold.id for hold in self.model.pending()]
        self.extend(data.draw(st.sampled_from(pending), label="hold"), ttl)

    @rule(hold_id=holds, data=st.data(), confirming=st.booleans())
    def resolve_part(self, hold_id: str, data: st.DataObject, confirming: bool) -> None:
        self._resolve_part(hold_id, data, confirming)

    def _resolve_part(self, hold_id: str, data: st.DataObject, confirming: bool) -> None:
        """Confirm or release some units of a hold (sometimes more than it holds)."""
        hold = self.model.holds[hold_id]
        units = {sku: n for sku, n in hold.confirmed.items() if n}  # a retry, maybe
        if not (hold.status is CONFIRMED and units and data.draw(st.booleans(), label="repeat")):
            skus = data.draw(st.lists(st.sampled_from(sorted(hold.lines)), min_size=1, unique=True))
            units = {
                sku: data.draw(
                    st.integers(1, max(hold.held(sku), 1)) | st.just(hold.held(sku) + 1), label=sku
                )
                for sku in skus
            }
        lines = [LineRequest(sku, n) for sku, n in units.items()]
        if confirming:
            outcome = self.run(self.service.confirm(hold_id, lines))
        else:
            outcome = self.run(self.service.release(hold_id, lines))
        target = CONFIRMED if confirming else RELEASED
        if hold.status is PENDING and hold.due:
            # Past expiry but not yet swept: expired by this call; a release answers it.
            if confirming:
                self.model.end(hold, EXPIRED)
                assert outcome == ReservationNotPending(hold_id, EXPIRED)
            else:
                self._ended_now(hold, EXPIRED, outcome)
                assert outcome == hold.as_reservation()
        elif hold.status is PENDING:
            too_many = [i for i, line in enumerate(lines) if line.quantity > hold.held(line.sku)]
            if too_many:  # nothing changes
                assert isinstance(outcome, InvalidInput), outcome
                assert outcome.field == f"lines[{too_many[0]}].quantity"
                return
            self.model.part(hold, units, confirming, "CONFIRM" if confirming else "RELEASE")
            if confirming:
                self._ended_now(hold, CONFIRMED, outcome, rest_ships=False)
            elif not any(hold.held(sku) for sku in hold.lines):
                self._ended_now(hold, RELEASED, outcome)
            assert outcome == hold.as_reservation()
        elif hold.status is target and (
            not confirming or units == {sku: n for sku, n in hold.confirmed.items() if n}
        ):
            assert outcome == hold.as_reservation()  # a retry of the call that ended it
        elif not confirming and hold.status is EXPIRED:
            assert outcome == hold.as_reservation()
        else:
            assert outcome == ReservationNotPending(hold_id, hold.status)

    def _ended_now(
        self,
        hold: Hold,
        status: ReservationStatus,
        outcome: ResolveOutcome,
        rest_ships: bool | None = None,
    ) -> None:
        self.model.end(hold, status, rest_ships)
        assert isinstance(outcome, Reservation) and outcome.resolved_at is not None, outcome
        hold.resolved_at = outcome.resolved_at

    # Expiry, without sleeping: a PENDING hold's expires_at may be moved (only ended holds
    # are frozen by the trigger), and CHECK (expires_at > created_at) allows a few
    # microseconds after creation, which is long past.

    @precondition(lambda self: self.model.pending())
    @rule(data=st.data(), every=st.booleans())
    def make_due(self, data: st.DataObject, every: bool) -> None:
        """Pending holds go past their expiry: some, or all of them, so that the sweeper
        often has more due than fit in one batch."""
        pending = [hold.id for hold in self.model.pending()]
        if not every:
            pending = data.draw(st.lists(st.sampled_from(pending), min_size=1, unique=True))
        for hold_id in pending:
            self._make_due(self.model.holds[hold_id])

    def _make_due(self, hold: Hold) -> None:
        # A different number of microseconds each time: holds made in one batch share
        # created_at, and ties would let a sweeper batch pick either of them, which would
        # make failures irreproducible.
        self.made_due += 1
        expires_at = self.run(self.db.fetchval(MAKE_DUE, uuid.UUID(hold.id), self.made_due))
        assert expires_at is not None
        hold.due, hold.expires_at = True, expires_at

    @precondition(lambda self: self.model.pending())
    @rule(batch_size=st.integers(1, 3), after_a_pause=st.booleans())
    def sweep(self, batch_size: int, after_a_pause: bool) -> None:
        """The sweeper, in batches until nothing is due; holds not due stay as they are.
        `after_a_pause`: no sweeper ran for long, so every pending hold is due (a backlog
        of several batches)."""
        for hold in self.model.pending() if after_a_pause else ():
            if not hold.due:
                self._make_due(hold)
        due = self.model.due()
        sweeper = Sweeper(Reservations(self.harness.pool, 600), interval=0, batch_size=batch_size)
        assert self.run(sweeper.sweep_once()) == len(due)
        for hold in due:
            self.model.end(hold, EXPIRED)

    @precondition(lambda self: len(self.model.pending()) >= 2)
    @rule(data=st.data())
    def expire_one_batch(self, data: st.DataObject) -> None:
        """Every pending hold goes past its expiry, then a single sweeper batch, smaller
        than what is due, expires the earliest of them."""
        for hold in self.model.pending():
            if not hold.due:
                self._make_due(hold)
        due = sorted(self.model.due(), key=lambda hold: hold.expires_at)
        limit = data.draw(st.integers(1, len(due) - 1), label="limit")
        assert self.run(Reservations(self.harness.pool, 600).expire_due(limit)) == (limit, [])
        for hold in due[:limit]:
            self.model.end(hold, EXPIRED)

    # After every step.

    @invariant()
    def database_agrees_with_model(self) -> None:
        self.run(self._check_products())
        self.run(self._check_holds())
        report = self.run(reconcile(self.db, overdue_grace_seconds=OVERDUE_GRACE_SECONDS))
        assert report.ok, report.problems

    async def _check_products(self) -> None:
        rows = await self.db.fetch(PRODUCTS, [self.sku(slot) for slot in range(SLOTS)])
        found = {row["sku"]: row for row in rows}
        assert found.keys() == self.model.products.keys()
        held = Counter[str]()
        for hold in self.model.pending():
            held.update({sku: hold.held(sku) for sku in hold.lines})
        moved = self.moved
        for sku, stock in self.model.products.items():
            row = found[sku]
            assert 0 <= stock.reserved <= stock.quantity, (sku, stock)
            assert stock.reserved == held[sku], "the model's reserved is its pending holds"
            numbers = (stock.quantity, stock.reserved, stock.available)
            assert (row["quantity"], row["reserved"], row["available"]) == numbers, sku
            # Every change bumps the version; a step that changed nothing leaves it (a step
            # of several changes may end where it started, with a higher version).
            quantity, reserved, version = self.seen[sku]
            if (quantity, reserved) != (stock.quantity, stock.reserved):
                assert row["version"] > version, sku
            elif sku in moved:
                assert row["version"] >= version, sku
            else:
                assert row["version"] == version, sku
            self.seen[sku] = (stock.quantity, stock.reserved, row["version"])
        self.moved.clear()

    async def _check_holds(self) -> None:
        holds = self.model.holds
        every = await self.db.fetch(ALL_HOLDS, [self.sku(slot) for slot in range(SLOTS)])
        assert {row["id"] for row in every} == holds.keys(), "told vs held: a hold nobody knows"
        rows = await self.db.fetch(HOLDS, list(holds))
        assert {row["id"] for row in rows} == holds.keys()
        for row in rows:
            hold = holds[row["id"]]
            assert row["status"] == hold.status.value, hold
            assert row["lines"] == [f"{sku}:{n}" for sku, n in sorted(hold.lines.items())]
            assert row["expires_at"] == hold.expires_at
            if hold.status is PENDING:
                # Only holds made due are past expiry: none expire by the clock in a run.
                assert row["past_expiry"] == hold.due, hold
                assert row["resolved_at"] is None
            elif hold.resolved_at is None:  # ended by a sweep: first seen now
                assert row["resolved_at"] is not None
                hold.resolved_at = row["resolved_at"]
            else:
                assert row["resolved_at"] == hold.resolved_at, "a hold ended twice"
        # The ledger: one RESERVE row per line, one row per line each time part of it
        # leaves, and one closing row per line still holding units when the hold ends.
        movements = await self.db.fetch(MOVEMENTS, list(holds))
        found = {(row["id"], row["kind"]): row["n"] for row in movements}
        expected = {
            (hold.id, kind): n for hold in holds.values() for kind, n in hold.movements.items() if n
        }
        assert found == expected


@pytest.fixture(params=[False, True], ids=["direct", "coalesced"])
def harness(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[Harness]:
    harness = Harness(postgres_url, coalesce=request.param)
    try:
        yield harness
    finally:
        harness.close()


def test_the_service_agrees_with_the_model(harness: Harness) -> None:
    machine = type("InventoryMachine", (InventoryMachine,), {"harness": harness})
    run_state_machine_as_test(machine, settings=SETTINGS)
