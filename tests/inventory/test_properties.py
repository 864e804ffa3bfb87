"""A Hypothesis state machine: the inventory service against an in-memory model.

Random sequences of reserve (carts, idempotency keys, replays), confirm, release, expiry
(holds made due by SQL, then swept), stock adjustments and product creation, by a few
buyers and anonymous callers; purchase limits set and removed; the waiting list (joins,
leaves, and the holds its trigger offers when units free up). After every step the
database must agree with the model (stock, queues, holds with their buyers, entries),
and with itself (`reconcile`). The machine runs twice: reserves in their own
transactions, and through the coalescer.

Hypothesis' stateful testing is synchronous, so each run owns one event loop and drives
the service with `run_until_complete`. Each run gets its own database, without a sweeper:
the machine decides when holds expire, by moving their expiry into the past with SQL
rather than by sleeping. Examples share that database (a fresh one every
EXAMPLES_PER_DATABASE examples), each with its own skus and idempotency keys (a uuid
prefix), so `reconcile`, which checks the whole database, must pass after every step of
every example.

Needs `hypothesis>=6`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
    ADMIN,
    BuyerRequired,
    Caller,
    HoldLimitReached,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidInput,
    LineRequest,
    Product,
    ProductExists,
    ProductNotFound,
    ProductOutcome,
    PurchaseLimitExceeded,
    Reservation,
    ReservationLine,
    ReservationNotFound,
    ReservationNotPending,
    ReservationStatus,
    ReserveOutcome,
    ResolveOutcome,
    TooManyPendingHolds,
    WaitlistEntry,
    WaitlistEntryNotFound,
    WaitlistOutcome,
    WaitlistStatus,
)
from inventory_graphql.inventory.reconcile import Report, reconcile
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
WAITING = WaitlistStatus.WAITING
OFFERED = WaitlistStatus.OFFERED
LEFT = WaitlistStatus.LEFT

# 100 examples a variant in the suite: fewer (70 measured) leave rules' rarer branches
# unreached. INVENTORY_PROPERTY_EXAMPLES=1000 (say) searches longer, e.g. after a change to
# the reserve paths.
EXAMPLES = int(os.environ.get("INVENTORY_PROPERTY_EXAMPLES", "100"))
# `reconcile` reads the whole database after every step: over 100 examples it went from
# 2 to 8 ms a step as the examples' rows piled up.
EXAMPLES_PER_DATABASE = 20
SETTINGS = settings(
    max_examples=EXAMPLES,
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
# Who asks: anonymous (None) or one of the example's buyers (by number). Each request of
# a batch has its own, so one buyer's requests meet in a batch, against its limit.
BUYERS = 2
WHO = st.sampled_from([None, *range(BUYERS)])
BATCH = st.lists(st.tuples(SINGLE | CART, WHO), min_size=2, max_size=6)
# Who acts on a hold or an entry: its own buyer, an admin, or someone else (told it
# does not exist, and nothing changes).
ACTOR = st.sampled_from(["owner", "owner", "owner", "admin", "stranger"])
# Small limits, so that buyers reach them; 0 is refused; None removes the limit.
LIMITS = st.none() | st.integers(1, 4) | st.just(0)
# A buyer's PENDING holds are capped (INVENTORY_MAX_PENDING_HOLDS_PER_BUYER); small, so
# the cap is reached. Anonymous holds are not capped, nor the holds the queue offers.
MAX_PENDING = 2
# Offered holds last INVENTORY_WAITLIST_HOLD_SECONDS (the pool's session setting, read by
# the trigger): not the default, so the setting is seen to reach the trigger.
WAITLIST_TTL = 420
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
SELECT sku, quantity, reserved, quantity - reserved AS available, version, waiting,
       purchase_limit
FROM product WHERE sku = any($1::text[])
"""
HOLDS = """
SELECT r.id::text, r.status::text, r.buyer, r.expires_at, r.resolved_at,
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

# Every waiting-list entry on this example's products, in join order.
ENTRIES = """
SELECT w.id::text, p.sku, w.buyer, w.quantity, w.status::text, w.reservation_id::text
FROM waitlist_entry w JOIN product p ON p.id = w.product_id
WHERE p.sku = any($1::text[])
ORDER BY w.seq
"""
# The holds the trigger offered to these entries.
OFFERS = """
SELECT w.id::text AS entry, w.status::text, r.id::text, r.buyer, r.created_at, r.expires_at
FROM waitlist_entry w JOIN reservation r ON r.id = w.reservation_id
WHERE w.id = any($1::uuid[])
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
    limit: int | None = None  # units per buyer, held plus bought

    @property
    def available(self) -> int:
        return self.quantity - self.reserved


@dataclass
class Hold:
    id: str
    lines: dict[str, int]
    created_at: datetime
    expires_at: datetime
    buyer: str | None = None
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


@dataclass
class Entry:
    """A waiting-list entry: WAITING until it is offered a hold or leaves."""

    id: str
    sku: str
    buyer: str
    quantity: int
    created_at: datetime
    status: WaitlistStatus = WAITING
    reservation_id: str | None = None  # the offered hold, once the machine has read it


Shortage = ProductNotFound | InsufficientStock
Refusal = Shortage | BuyerRequired | PurchaseLimitExceeded | TooManyPendingHolds


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
        # (buyer, idempotency key) -> hold id, for holds made with it: keys are per buyer.
        self.keys: dict[tuple[str | None, str], str] = {}
        self.entries: dict[str, Entry] = {}  # in join order
        self.offered: list[Entry] = []  # offered since the machine last read the offers

    def available(self) -> dict[str, int]:
        return {sku: stock.available for sku, stock in self.products.items()}

    def public(self) -> dict[str, int]:
        """What a reserve may take: nothing of a product while anyone waits for it."""
        return {
            sku: 0 if self.waiting(sku) else stock.available for sku, stock in self.products.items()
        }

    def pending(self) -> list[Hold]:
        return [hold for hold in self.holds.values() if hold.status is PENDING]

    def due(self) -> list[Hold]:
        return [hold for hold in self.pending() if hold.due]

    def tally(self, buyer: str, sku: str) -> int:
        """Units of `sku` the buyer holds plus has bought: every line keeps what it did
        not give back, whatever its hold's status."""
        return sum(
            hold.lines[sku] - hold.released[sku]
            for hold in self.holds.values()
            if hold.buyer == buyer and sku in hold.lines
        )

    def pending_of(self, buyer: str) -> int:
        return sum(1 for hold in self.pending() if hold.buyer == buyer)

    def above_limit(self) -> set[tuple[str, str]]:
        """(sku, buyer) pairs above the sku's limit: a limit lowered below what a buyer
        already held or bought (those stand)."""
        buyers = {hold.buyer for hold in self.holds.values() if hold.buyer is not None}
        return {
            (sku, buyer)
            for sku, stock in self.products.items()
            for buyer in buyers
            if stock.limit is not None and self.tally(buyer, sku) > stock.limit
        }

    def queue(self, sku: str) -> list[Entry]:
        return [e for e in self.entries.values() if e.sku == sku and e.status is WAITING]

    def waiting(self, sku: str) -> int:
        return sum(entry.quantity for entry in self.queue(sku))

    def position(self, entry: Entry) -> int | None:
        return self.queue(entry.sku).index(entry) + 1 if entry.status is WAITING else None

    def refusal(
        self,
        lines: Sequence[LineRequest],
        buyer: str | None,
        available: dict[str, int],
        earlier: Sequence[tuple[str | None, Sequence[LineRequest]]] = (),
    ) -> Refusal | None:
        """Why a reserve is refused, given public `available` stock and the `earlier`
        requests granted in its batch (None: it is held). A cart is first checked against
        the stock as a whole; then line by line in sku order, the buyer's limit before
        the stock; then the buyer's pending holds."""
        if len(lines) > 1 and (short := first_shortage(lines, available)):
            return short
        for line in sorted(lines, key=lambda line: line.sku):
            stock = self.products.get(line.sku)
            if stock is None:
                return ProductNotFound(line.sku)
            if stock.limit is not None:
                if buyer is None:
                    return BuyerRequired(line.sku)
                held = self.tally(buyer, line.sku) + sum(
                    other.quantity
                    for who, cart in earlier
                    if who == buyer
                    for other in cart
                    if other.sku == line.sku
                )
                if held + line.quantity > stock.limit:
                    return PurchaseLimitExceeded(line.sku, stock.limit, held)
            if available[line.sku] < line.quantity:
                return InsufficientStock(line.sku, line.quantity, available[line.sku])
        if buyer is not None:
            holds = self.pending_of(buyer) + sum(1 for who, _ in earlier if who == buyer)
            if holds + 1 > MAX_PENDING:
                return TooManyPendingHolds(MAX_PENDING)
        return None

    def add_hold(self, reservation: Reservation, key: str | None, buyer: str | None = None) -> Hold:
        hold = Hold(
            id=reservation.id,
            lines={line.sku: line.quantity for line in reservation.lines},
            created_at=reservation.created_at,
            expires_at=reservation.expires_at,
            buyer=buyer,
        )
        assert hold.id not in self.holds, "a new hold reused an id"
        self.holds[hold.id] = hold
        for sku, n in hold.lines.items():
            self.products[sku].reserved += n
        hold.movements["RESERVE"] = len(hold.lines)
        if key is not None:
            self.keys[buyer, key] = hold.id
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

    def serve(self) -> None:
        """The trigger's work, in the transaction of any change that leaves units free:
        each queue's head is offered a hold while its whole quantity fits (strict FIFO).
        Serving after a whole step is the same as after each statement of it: within a
        step, what is free on a product with a queue only grows."""
        for sku, stock in sorted(self.products.items()):
            if stock.available == 0:
                continue  # nothing was freed here: the trigger has nothing to hand out
            for entry in self.queue(sku):
                over = stock.limit is not None and (
                    self.tally(entry.buyer, sku) + entry.quantity > stock.limit
                )
                if over:
                    entry.status = LEFT  # the limit was lowered since it joined
                    continue
                if entry.quantity > stock.available:
                    break  # nobody behind the head is served
                entry.status = OFFERED
                stock.reserved += entry.quantity  # its hold, once the machine reads it
                self.offered.append(entry)

    def add_offer(self, entry: Entry, hold_id: str, created_at: datetime) -> Hold:
        """The hold the trigger made for an offered entry (its units already counted)."""
        hold = Hold(
            id=hold_id,
            lines={entry.sku: entry.quantity},
            created_at=created_at,
            expires_at=created_at + timedelta(seconds=WAITLIST_TTL),
            buyer=entry.buyer,
        )
        assert hold.id not in self.holds, "an offer reused a hold"
        hold.movements["RESERVE"] = 1
        self.holds[hold.id] = hold
        entry.reservation_id = hold.id
        return hold

    def view(self, entry: Entry) -> WaitlistEntry:
        """What the service must answer for this entry as it is now."""
        return WaitlistEntry(
            id=entry.id,
            sku=entry.sku,
            quantity=entry.quantity,
            status=entry.status,
            position=self.position(entry),
            reservation_id=entry.reservation_id,
            created_at=entry.created_at,
        )


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
        self.examples = 0

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
        self.examples += 1
        if self.examples % EXAMPLES_PER_DATABASE == 0:
            self.dirty = True

    async def _open(self) -> None:
        await self._close()
        self._stack = contextlib.AsyncExitStack()
        url = await create_database(self.postgres_url)
        self.databases.append(url)
        self.pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=4,
            server_settings={"inventory.waitlist_hold_seconds": str(WAITLIST_TTL)},
        )
        self._stack.push_async_callback(self.pool.close)
        # The checks' own connection: never one the service could be waiting for.
        self.db = await asyncpg.connect(url)
        self._stack.push_async_callback(self.db.close)
        # And `reconcile`'s, so that it runs beside the model's checks after each step.
        self.audit = await asyncpg.connect(url)
        self._stack.push_async_callback(self.audit.close)
        self.service = InventoryService(
            self.pool,
            Settings(coalesce_reservations=self.coalesce, max_pending_holds_per_buyer=MAX_PENDING),
        )
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
    entries = Bundle("entries")

    def __init__(self) -> None:
        super().__init__()
        self.harness.before_example()
        self.prefix = f"PT{uuid.uuid4().hex[:10]}"
        self.model = Model()
        self.service = self.harness.service
        self.db = self.harness.db
        self.audit = self.harness.audit
        # Per sku: (quantity, reserved, waiting, limit) and the version at the last check.
        self.seen: dict[str, tuple[tuple[int, int, int, int | None], int]] = {}
        self.moved: set[str] = set()  # skus changed more than once in the last step
        self.made_due = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.harness.run(coroutine)

    def sku(self, slot: int) -> str:
        return f"{self.prefix}-{slot}"

    def key(self, slot: int) -> str:
        return f"{self.prefix}-key-{slot}"

    def buyer(self, who: int | None) -> str | None:
        """The example's own buyers: the pending-hold cap counts a buyer's holds on every
        product, so buyers must not carry over between examples."""
        return None if who is None else f"{self.prefix}-buyer-{who}"

    def lines(self, cart: Sequence[tuple[int, int]]) -> list[LineRequest]:
        return [LineRequest(self.sku(slot), n) for slot, n in cart]

    def actor(self, owner: str | None, actor: str, data: st.DataObject) -> Caller:
        """The caller for `actor` on something of `owner`'s: a stranger is anyone else,
        anonymous included."""
        if actor == "owner":
            return Caller(buyer=owner)
        if actor == "admin":
            return ADMIN
        others = [who for who in [None, *range(BUYERS)] if self.buyer(who) != owner]
        return Caller(buyer=self.buyer(data.draw(st.sampled_from(others), label="stranger")))

    def teardown(self) -> None:
        # Limits lowered below what a buyer holds are reported by `reconcile` (which the
        # next examples run on the whole database): lift them before leaving.
        for sku, _ in self.model.above_limit():
            with contextlib.suppress(Exception):
                self.run(self.service.set_purchase_limit(sku, None))
        self.harness.after_example()

    # Products.

    @initialize(
        target=holds,
        quantities=st.lists(QUANTITIES, min_size=INITIAL_SLOTS, max_size=INITIAL_SLOTS),
        limits=st.lists(LIMITS, min_size=INITIAL_SLOTS, max_size=INITIAL_SLOTS),
        carts=st.lists(st.tuples(CART, st.booleans(), WHO), max_size=4),
    )
    def start(
        self,
        quantities: list[int],
        limits: list[int | None],
        carts: list[tuple[list[tuple[int, int]], bool, int | None]],
    ) -> MultipleResults[str]:
        """Products, some with a purchase limit, and a few holds: swarm testing turns
        `reserve` off in some examples, and the rules that end holds should still have
        some to work on there."""
        for slot, (quantity, limit) in enumerate(zip(quantities, limits, strict=True)):
            assert isinstance(self._create(slot, quantity), Product)
            self.set_purchase_limit(slot, limit)
        held = [self.reserve(cart, None, None, short, who) for cart, short, who in carts]
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
            self.seen[sku] = ((quantity, 0, 0, None), 1)
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
            self._serve()  # a restock goes to the queue first, in its own transaction
            assert isinstance(outcome, Product), outcome
            # The answer is the product as that transaction left it, the queue's share taken.
            assert (outcome.sku, outcome.quantity, outcome.reserved, outcome.waiting) == (
                sku,
                stock.quantity,
                stock.reserved,
                self.model.waiting(sku),
            )

    @rule(slot=st.integers(0, SLOTS - 1), limit=LIMITS)
    def set_purchase_limit(self, slot: int, limit: int | None) -> None:
        """Admin: a limit set, changed (maybe below what buyers already hold: that
        stands), or removed."""
        sku = self.sku(slot)
        stock = self.model.products.get(sku)
        outcome = self.run(self.service.set_purchase_limit(sku, limit))
        if limit == 0:
            assert isinstance(outcome, InvalidInput) and outcome.field == "perBuyer", outcome
        elif stock is None:
            assert outcome == ProductNotFound(sku)
        else:
            stock.limit = limit
            assert isinstance(outcome, Product), outcome
            assert (outcome.sku, outcome.quantity, outcome.reserved) == (
                sku,
                stock.quantity,
                stock.reserved,
            )
            assert (outcome.purchase_limit, outcome.waiting) == (limit, self.model.waiting(sku))

    # Reserving.

    @rule(
        target=holds,
        cart=CART,
        ttl=TTLS,
        key_slot=st.none() | st.integers(0, KEY_SLOTS - 1),
        short=st.booleans(),
        who=WHO,
    )
    def reserve(
        self,
        cart: list[tuple[int, int]],
        ttl: int | None,
        key_slot: int | None,
        short: bool,
        who: int | None,
    ) -> NewHolds:
        """`short`: a new hold is moved past its expiry at once, as if its ttl were tiny.
        Keys are per buyer: another buyer's key is a key of its own."""
        key = None if key_slot is None else self.key(key_slot)
        held = self._reserve(self.lines(cart), ttl, key, self.buyer(who))
        if short and isinstance(held, str):
            self._make_due(self.model.holds[held])
        return held

    @rule(target=holds, line=SINGLE, who=st.integers(0, BUYERS - 1))
    def buyer_reserves(self, line: list[tuple[int, int]], who: int) -> NewHolds:
        """A buyer's single line, a drop's common request: buyers meet their limits and
        the pending-hold cap."""
        return self._reserve(self.lines(line), None, None, self.buyer(who))

    @precondition(lambda self: self.model.keys)
    @rule(
        target=holds,
        data=st.data(),
        lines_as=st.sampled_from(["reversed", "shuffled", "other", "by another buyer"]),
        ttl=TTLS,
    )
    def reuse_key(self, data: st.DataObject, lines_as: str, ttl: int | None) -> NewHolds:
        """A buyer's used key again: with the same lines in any order it answers the
        original hold as it is now; with other lines, IdempotencyKeyReused. Nothing new
        is held. The same key and lines from another caller are that caller's own key:
        a reserve of its own, which neither reveals nor returns the first hold."""
        used = sorted(self.model.keys, key=lambda used: (used[0] or "", used[1]))
        buyer, key = data.draw(st.sampled_from(used), label="key")
        hold = self.model.holds[self.model.keys[buyer, key]]
        held = [LineRequest(sku, n) for sku, n in hold.lines.items()]  # in sku order
        if lines_as == "reversed":
            lines = held[::-1]
        elif lines_as == "shuffled":
            lines = data.draw(st.permutations(held), label="lines")
        elif lines_as == "other":
            lines = self.lines(data.draw(CART, label="cart"))
        else:
            lines = held
            buyer = self.actor(buyer, "stranger", data).buyer
        return self._reserve(lines, ttl, key, buyer)

    def _reserve(
        self, lines: list[LineRequest], ttl: int | None, key: str | None, buyer: str | None
    ) -> NewHolds:
        caller = Caller(buyer=buyer)
        outcome = self.run(self.service.reserve(lines, ttl, key, caller=caller))
        if key is not None and (buyer, key) in self.model.keys:
            hold = self.model.holds[self.model.keys[buyer, key]]
            if same_lines(hold, lines):
                assert outcome == hold.as_reservation()
            else:
                assert outcome == IdempotencyKeyReused(key)
            return multiple()  # nothing new was held
        if refusal := self.model.refusal(lines, buyer, self.model.public()):
            assert outcome == refusal
            return multiple()
        return self._new_hold(outcome, lines, ttl, key, buyer).id

    def _new_hold(
        self,
        outcome: ReserveOutcome,
        lines: Sequence[LineRequest],
        ttl: int | None,
        key: str | None,
        buyer: str | None,
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
        return self.model.add_hold(outcome, key, buyer)

    @precondition(lambda self: self.harness.coalesce)
    @rule(target=holds, carts=BATCH, ttl=TTLS)
    def reserve_together(
        self, carts: list[tuple[list[tuple[int, int]], int | None]], ttl: int | None
    ) -> MultipleResults[str]:
        """Requests queued in one tick form one batch: granted as if one after another, in
        queue order, each buyer's limit and pending holds counting its earlier grants in
        the batch. A refused cart says why as the stock stood at the batch's start when it
        could not fit even then (refused for one read, before any lock), else as things
        stood at its turn; a refused single line, as they stood after the grant pass that
        refused it (at or after its turn, at or before the batch's end)."""
        requests = [(self.lines(cart), self.buyer(who)) for cart, who in carts]
        batches = self.service.stats().batches

        async def together() -> list[ReserveOutcome]:
            return await asyncio.gather(
                *(self.service.reserve(lines, ttl, caller=Caller(buyer=b)) for lines, b in requests)
            )

        outcomes = self.run(together())
        assert self.service.stats().batches == batches + 1, "the requests were not one batch"
        # The batch, one request after another, as the model decides them.
        available = self.model.public()
        at_start = dict(available)
        granted: list[tuple[str | None, list[LineRequest]]] = []
        told: list[Refusal | None] = []
        at_turn = []
        for lines, buyer in requests:
            at_turn.append((dict(available), list(granted)))
            refusal = (len(lines) > 1 and first_shortage(lines, at_start)) or self.model.refusal(
                lines, buyer, available, granted
            )
            told.append(refusal)
            if refusal is None:
                granted.append((buyer, lines))
                for line in lines:
                    available[line.sku] -= line.quantity
        answers = list(zip(requests, told, at_turn, outcomes, strict=True))
        # The grants first: a refusal is judged against the batch's end too.
        new = [
            self._new_hold(outcome, lines, ttl, None, buyer).id
            for (lines, buyer), refusal, _, outcome in answers
            if refusal is None
        ]
        for (lines, buyer), refusal, turn, outcome in answers:
            if refusal is None:
                continue
            if len(lines) > 1:
                assert outcome == refusal
            else:
                self._refused_single(lines[0], buyer, outcome, refusal, turn, at_start, granted)
        return multiple(*new)

    def _refused_single(
        self,
        line: LineRequest,
        buyer: str | None,
        outcome: ReserveOutcome,
        expected: Refusal,
        turn: tuple[dict[str, int], list[tuple[str | None, list[LineRequest]]]],
        before: dict[str, int],
        granted: list[tuple[str | None, list[LineRequest]]],
    ) -> None:
        """A refused single line of a batch: refused (the model says so, granting in
        FIFO order), for a reason that held at some point between its turn and the end of
        the batch. The grants made since are in the model already."""
        if line.sku not in before:
            assert outcome == ProductNotFound(line.sku)
            return
        if isinstance(expected, BuyerRequired):
            assert outcome == expected
            return
        stock = self.model.products[line.sku]
        if isinstance(outcome, PurchaseLimitExceeded):
            assert buyer is not None and stock.limit is not None, outcome
            assert (outcome.sku, outcome.limit) == (line.sku, stock.limit)
            # What the buyer had at its turn, at least; at most what it has after the batch.
            at_turn = self.model.tally(buyer, line.sku) - sum(
                other.quantity
                for who, cart in granted[len(turn[1]) :]
                if who == buyer
                for other in cart
                if other.sku == line.sku
            )
            assert at_turn <= outcome.already_held <= self.model.tally(buyer, line.sku), outcome
            assert outcome.already_held + line.quantity > stock.limit, "a refusal must be true"
            return
        if isinstance(outcome, TooManyPendingHolds):
            assert buyer is not None and outcome.limit == MAX_PENDING, outcome
            assert self.model.pending_of(buyer) >= MAX_PENDING, "a refusal must be true"
            return
        after = self.model.public()
        assert isinstance(outcome, InsufficientStock), outcome
        assert (outcome.sku, outcome.requested) == (line.sku, line.quantity)
        assert after[line.sku] <= outcome.available <= before[line.sku], outcome
        assert outcome.available < line.quantity, "a refusal must be true when it is told"

    async def _together(
        self, requests: list[list[LineRequest]], ttl: int | None
    ) -> list[ReserveOutcome]:
        return await asyncio.gather(*(self.service.reserve(lines, ttl) for lines in requests))

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
        (a restock, or a hold released, either maybe offered to a queue): whatever each
        caller is told is what the database holds, and no hold is made that nobody was
        told of."""
        requests = [self.lines(cart) for cart in carts]
        pending = [hold for hold in self.model.pending() if not hold.due]
        moving: Coroutine[Any, Any, object]  # a release's answer, or a restock's
        if move == "release" and pending:
            hold = data.draw(st.sampled_from(pending), label="released")
            moving = self.service.release(hold.id, caller=Caller(buyer=hold.buyer))
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
            stock_of = self.model.products.get(line.sku)
            if isinstance(outcome, Reservation):
                new.append(self._new_hold(outcome, lines, ttl, None, None).id)
            elif stock_of is None:
                assert outcome == ProductNotFound(line.sku)
            elif stock_of.limit is not None:  # these callers are anonymous
                assert outcome == BuyerRequired(line.sku)
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

    # Ending holds: by their buyer, or an admin; anyone else is told they do not exist.

    def _stranger(self, hold: Hold, caller: Caller, outcome: object) -> bool:
        """Whether `caller` may not see `hold`: then it was told so, and nothing changed."""
        if caller.owns(hold.buyer):
            return False
        assert outcome == ReservationNotFound(hold.id), outcome
        return True

    @rule(hold_id=holds, actor=ACTOR, data=st.data())
    def confirm(self, hold_id: str, actor: str, data: st.DataObject) -> None:
        hold = self.model.holds[hold_id]
        caller = self.actor(hold.buyer, actor, data)
        outcome = self.run(self.service.confirm(hold_id, caller=caller))
        if self._stranger(hold, caller, outcome):
            return
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

    @rule(hold_id=holds, actor=ACTOR, data=st.data())
    def release(self, hold_id: str, actor: str, data: st.DataObject) -> None:
        hold = self.model.holds[hold_id]
        caller = self.actor(hold.buyer, actor, data)
        outcome = self.run(self.service.release(hold_id, caller=caller))
        if self._stranger(hold, caller, outcome):
            return
        if hold.status is PENDING:
            # Past expiry but not yet swept: release expires it, and answers it.
            self._ended_now(hold, EXPIRED if hold.due else RELEASED, outcome)
            assert outcome == hold.as_reservation()
        elif hold.status in (RELEASED, EXPIRED):
            assert outcome == hold.as_reservation()
        else:
            assert outcome == ReservationNotPending(hold_id, hold.status)

    @precondition(lambda self: self.model.pending())
    @rule(data=st.data(), confirming=st.booleans())
    def end_pending(self, data: st.DataObject, confirming: bool) -> None:
        """Most holds in the bundle have ended, and the holds the queue offers are not in
        it: this one picks a pending hold, and its buyer confirms or releases it."""
        pending = [hold.id for hold in self.model.pending()]  # in creation order: ids are random
        hold_id = data.draw(st.sampled_from(pending), label="hold")
        (self.confirm if confirming else self.release)(hold_id, "owner", data)

    @rule(hold_id=holds, data=st.data())
    def read_hold(self, hold_id: str, data: st.DataObject) -> None:
        """A hold as its buyer (or an admin) reads it; to anyone else it does not exist."""
        hold = self.model.holds[hold_id]
        caller = self.actor(hold.buyer, data.draw(ACTOR, label="actor"), data)
        outcome = self.run(self.service.reservation(hold_id, caller=caller))
        assert outcome == (hold.as_reservation() if caller.owns(hold.buyer) else None)

    # Hold control: extend, partial confirm, partial release.

    @rule(hold_id=holds, ttl=st.sampled_from([1, 60, 3600]), actor=ACTOR, data=st.data())
    def extend(self, hold_id: str, ttl: int, actor: str, data: st.DataObject) -> None:
        hold = self.model.holds[hold_id]
        caller = self.actor(hold.buyer, actor, data)
        outcome = self.run(self.service.extend(hold_id, ttl, caller=caller))
        if self._stranger(hold, caller, outcome):
            return
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
        self.extend(data.draw(st.sampled_from(pending), label="hold"), ttl, "owner", data)

    @rule(hold_id=holds, data=st.data(), confirming=st.booleans())
    def resolve_part(self, hold_id: str, data: st.DataObject, confirming: bool) -> None:
        self._resolve_part(hold_id, data, confirming)

    def _resolve_part(self, hold_id: str, data: st.DataObject, confirming: bool) -> None:
        """Confirm or release some units of a hold (sometimes more than it holds)."""
        hold = self.model.holds[hold_id]
        caller = self.actor(hold.buyer, data.draw(ACTOR, label="actor"), data)
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
            outcome = self.run(self.service.confirm(hold_id, lines, caller=caller))
        else:
            outcome = self.run(self.service.release(hold_id, lines, caller=caller))
        if self._stranger(hold, caller, outcome):
            return
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

    # The waiting list.

    @rule(
        target=entries,
        slot=st.sampled_from([0, 0, 1, 2, 3]),
        quantity=st.integers(1, 3),
        who=WHO,
    )
    def join_waitlist(
        self, slot: int, quantity: int, who: int | None
    ) -> str | MultipleResults[str]:
        """A buyer waits for units: offered a hold at once when nobody waits and they are
        there; else in the queue, behind everyone who joined before."""
        sku, buyer = self.sku(slot), self.buyer(who)
        outcome = self.run(self.service.join_waitlist(sku, quantity, caller=Caller(buyer=buyer)))
        stock = self.model.products.get(sku)
        if buyer is None:
            assert outcome == BuyerRequired(sku)
            return multiple()
        if stock is None:
            assert outcome == ProductNotFound(sku)
            return multiple()
        mine = [entry for entry in self.model.queue(sku) if entry.buyer == buyer]
        if mine:  # one WAITING entry per buyer per sku: joining again answers it
            if mine[0].quantity == quantity:
                assert outcome == self.model.view(mine[0])
            else:
                assert isinstance(outcome, InvalidInput) and outcome.field == "quantity", outcome
            return multiple()
        held = self.model.tally(buyer, sku)
        if stock.limit is not None and held + quantity > stock.limit:
            assert outcome == PurchaseLimitExceeded(sku, stock.limit, held)
            return multiple()
        assert isinstance(outcome, WaitlistEntry), outcome
        assert outcome.id not in self.model.entries
        entry = Entry(outcome.id, sku, buyer, quantity, outcome.created_at)
        self.model.entries[entry.id] = entry
        self._serve()
        assert outcome == self.model.view(entry)
        return entry.id

    @precondition(
        lambda self: any(
            self.model.queue(sku) or not stock.available
            for sku, stock in self.model.products.items()
        )
    )
    @rule(
        target=entries, data=st.data(), quantity=st.integers(1, 2), who=st.integers(0, BUYERS - 1)
    )
    def join_when_sold_out(
        self, data: st.DataObject, quantity: int, who: int
    ) -> str | MultipleResults[str]:
        """A buyer joins the queue of a product it cannot reserve now (sold out, or others
        wait): it waits, and the units freed later are offered to it in turn."""
        short = [
            slot
            for slot in range(SLOTS)
            if (stock := self.model.products.get(self.sku(slot))) is not None
            and (self.model.queue(self.sku(slot)) or not stock.available)
        ]
        slot = data.draw(st.sampled_from(short), label="slot")
        return self.join_waitlist(slot, quantity, who)

    @rule(entry_id=entries, actor=ACTOR, leaving=st.booleans(), data=st.data())
    def entry_as(self, entry_id: str, actor: str, leaving: bool, data: st.DataObject) -> None:
        """An entry read or left by its buyer (or an admin): leaving twice, or leaving an
        entry already offered, answers it as it is. Anyone else is told it does not exist."""
        entry = self.model.entries[entry_id]
        caller = self.actor(entry.buyer, actor, data)
        outcome: WaitlistOutcome | None
        if leaving:
            outcome = self.run(self.service.leave_waitlist(entry_id, caller=caller))
            if not caller.owns(entry.buyer):
                assert outcome == WaitlistEntryNotFound(entry_id)
                return
            if entry.status is WAITING:
                entry.status = LEFT
                self._serve()  # the next in line may fit now
        else:
            outcome = self.run(self.service.waitlist_entry(entry_id, caller=caller))
            if not caller.owns(entry.buyer):
                assert outcome is None
                return
        assert outcome == self.model.view(entry)

    @precondition(lambda self: any(e.status is WAITING for e in self.model.entries.values()))
    @rule(data=st.data(), leaving=st.booleans())
    def waiting_entry(self, data: st.DataObject, leaving: bool) -> None:
        """Most entries in the bundle were offered or left: this one picks a waiting one."""
        waiting = [e.id for e in self.model.entries.values() if e.status is WAITING]
        self.entry_as(data.draw(st.sampled_from(waiting), label="entry"), "owner", leaving, data)

    @precondition(lambda self: any(self.model.queue(sku) for sku in self.model.products))
    @rule(data=st.data(), how=st.sampled_from(["release", "release part", "expire", "restock"]))
    def free_units_for_queue(self, data: st.DataObject, how: str) -> None:
        """Units freed on a product people wait for: a hold on it released (whole or in
        part) or expired, or a restock. The head of the queue gets them in the same
        transaction when its whole quantity fits (as the checks after the step see)."""
        queued = sorted(sku for sku in self.model.products if self.model.queue(sku))
        sku = data.draw(st.sampled_from(queued), label="sku")
        holding = [h.id for h in self.model.pending() if sku in h.lines and h.held(sku)]
        if how == "restock" or not holding:
            slot = int(sku.rsplit("-", 1)[1])
            self.adjust_stock(slot, data.draw(st.integers(1, 3), label="delta"), None)
            return
        hold_id = data.draw(st.sampled_from(holding), label="hold")
        if how == "release":
            self.release(hold_id, "owner", data)
        elif how == "release part":
            self._resolve_part(hold_id, data, confirming=False)
        else:
            self._make_due(self.model.holds[hold_id])
            self.sweep(batch_size=3, after_a_pause=False)

    def _serve(self) -> None:
        """What the queues were offered by the last step, as the model says: each offered
        entry's hold (its buyer's, WAITLIST_TTL long) joins the model's holds."""
        self.model.serve()
        offered, self.model.offered = self.model.offered, []
        if not offered:
            return
        rows = self.run(self.db.fetch(OFFERS, [uuid.UUID(entry.id) for entry in offered]))
        found = {row["entry"]: row for row in rows}
        assert found.keys() == {entry.id for entry in offered}, "an entry was not offered"
        for entry in offered:
            row = found[entry.id]
            assert (row["status"], row["buyer"]) == (OFFERED.value, entry.buyer), row
            assert row["expires_at"] - row["created_at"] == timedelta(seconds=WAITLIST_TTL)
            self.model.add_offer(entry, row["id"], row["created_at"])

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
        # Whatever the step freed went to the queues in its own transaction.
        self._serve()
        report = self.run(self._check())
        assert report.ok, report.problems
        # Buyers above a limit lowered below what they had: counted, not a problem (the
        # database's count covers every example's products; ours are among them).
        assert report.above_lowered_limit >= len(self.model.above_limit())

    async def _check(self) -> Report:
        """The model's checks, and `reconcile` on its own connection meanwhile: all reads of
        one committed state (nothing runs between steps), so side by side is as sound."""
        audit = asyncio.ensure_future(
            reconcile(self.audit, overdue_grace_seconds=OVERDUE_GRACE_SECONDS)
        )
        try:
            await self._check_products()
            await self._check_holds()
            await self._check_entries()
        finally:
            await asyncio.wait([audit])  # never left running into the next step
        return audit.result()

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
            numbers = (stock.quantity, stock.reserved, self.model.waiting(sku), stock.limit)
            columns = ("quantity", "reserved", "waiting", "purchase_limit")
            assert tuple(row[column] for column in columns) == numbers, sku
            assert row["available"] == stock.available, sku
            # Nobody waits for what is there: the head of a queue never fits.
            queue = self.model.queue(sku)
            assert not queue or queue[0].quantity > stock.available, (sku, queue[0])
            # Every change bumps the version; a step that changed nothing leaves it (a step
            # of several changes may end where it started, with a higher version).
            seen, version = self.seen[sku]
            if seen != numbers:
                assert row["version"] > version, sku
            elif sku in moved:
                assert row["version"] >= version, sku
            else:
                assert row["version"] == version, sku
            self.seen[sku] = (numbers, row["version"])
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
            assert row["buyer"] == hold.buyer, hold
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

    async def _check_entries(self) -> None:
        """Every entry on this example's products is one a buyer was told of, in join
        order, with its status and the hold it was offered."""
        rows = await self.db.fetch(ENTRIES, [self.sku(slot) for slot in range(SLOTS)])
        assert [row["id"] for row in rows] == list(self.model.entries), "told vs held"
        for row in rows:
            entry = self.model.entries[row["id"]]
            assert (row["sku"], row["buyer"], row["quantity"]) == (
                entry.sku,
                entry.buyer,
                entry.quantity,
            )
            assert (row["status"], row["reservation_id"]) == (
                entry.status.value,
                entry.reservation_id,
            ), entry


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


# What the machine once found, by hand: grant_singles' limit and pending windows counted
# a buyer's refused requests, so the buyer's next request lost its place in line.
@pytest.mark.parametrize("window", ["limit", "pending"])
async def test_a_buyers_refused_request_lets_nobody_overtake_its_next_one(
    pool: asyncpg.Pool, db: asyncpg.Connection, make_product: Any, window: str
) -> None:
    """One batch, FIFO: buyer b's first request is refused (over its limit of 1; or, with
    one pending hold of a cap of 2, short on another product), its second one fits and is
    first in line for the last unit, and buyer c's request behind it is refused."""
    sku, other = await make_product(1), await make_product(1)
    b, c = Caller(buyer=f"b-{uuid.uuid4().hex}"), Caller(buyer=f"c-{uuid.uuid4().hex}")
    service = InventoryService(
        pool, Settings(coalesce_reservations=True, max_pending_holds_per_buyer=2)
    )
    async with service.running(sweep=False):
        if window == "limit":
            await db.execute("UPDATE product SET purchase_limit = 1 WHERE sku = $1", sku)
            first = LineRequest(sku, 2)
        else:
            held = await service.reserve([LineRequest(other, 1)], caller=b)
            assert isinstance(held, Reservation), held
            first = LineRequest(other, 1)  # the other product is sold out now
        outcomes = await asyncio.gather(
            service.reserve([first], caller=b),
            service.reserve([LineRequest(sku, 1)], caller=b),
            service.reserve([LineRequest(sku, 1)], caller=c),
        )
    assert not isinstance(outcomes[0], Reservation), outcomes[0]
    assert isinstance(outcomes[1], Reservation), outcomes[1]
    assert outcomes[2] == InsufficientStock(sku, 1, 0)
