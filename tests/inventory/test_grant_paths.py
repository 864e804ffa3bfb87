"""grant_singles' paths (migration 007) answer alike: a drop's batch (a limited product,
another buyer per request, no pending-hold cap) takes a statement without the per-buyer
windows, and its rows and what it leaves in the database are exactly what the full
statement gives on the same inputs.

The full statement is forced by a pending-hold cap that never binds (it then also counts
pending holds: the only column that differs). Each case runs the full statement in a
transaction that is rolled back, then the drop's statement on the same state with the
same ids, self-committing as the coalescer runs it; then the database is checked against
the rows: every grant is held as told, every refusal holds nothing, and the numbers the
rows report are the database's.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inventory_graphql.inventory.models import Caller, LineRequest, Reservation, WaitlistEntry
from inventory_graphql.inventory.reconcile import reconcile
from inventory_graphql.inventory.service import InventoryService

GRANT = "SELECT * FROM grant_singles($1, $2, $3, $4, $5, $6)"
NEVER_BINDS = 1_000_000_000  # a pending-hold cap nobody reaches: forces the full statement
TTL = 3600.0  # no sweeper runs in this shared database: nothing of ours may fall due in it

# What each path's statement alone contains (migration 007), to tell which one ran.
PATHS = {
    "lean": "sum(r.quantity) OVER",
    "drop": "CROSS JOIN LATERAL",
    "full": "granted_units AS",
}

# The state a grant may change, for the skus of a case and the ids of its requests.
PRODUCTS = """
SELECT sku, quantity, reserved, waiting, version FROM product
WHERE sku = any($1::text[]) ORDER BY sku
"""
HOLDS = """
SELECT r.id, r.buyer, r.status::text, r.expires_at - r.created_at AS ttl,
       p.sku, l.quantity, l.confirmed, l.released
FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id
JOIN product p ON p.id = l.product_id
WHERE r.id = any($1::uuid[]) ORDER BY r.id
"""
LEDGER = """
SELECT p.sku, m.kind::text, m.quantity_delta, m.reserved_delta, m.reservation_id
FROM stock_movement m JOIN product p ON p.id = m.product_id
WHERE p.sku = any($1::text[]) ORDER BY m.id
"""
TALLY = "SELECT buyer_tally($1, (SELECT id FROM product WHERE sku = $2))"


@dataclass(frozen=True)
class Ask:
    sku: str
    quantity: int
    buyer: str | None


Setup = Callable[["Shop"], Awaitable[list[Ask]]]


@dataclass
class Shop:
    db: asyncpg.Connection
    service: InventoryService
    make_product: Callable[..., Awaitable[str]]

    async def product(self, quantity: int, limit: int | None = None) -> str:
        sku = await self.make_product(quantity)
        if limit is not None:
            await self.db.execute(
                "UPDATE product SET purchase_limit = $2 WHERE sku = $1", sku, limit
            )
        return sku

    async def hold(self, sku: str, quantity: int, buyer: str | None) -> str:
        held = await self.service.reserve(
            [LineRequest(sku, quantity)], ttl_seconds=600, caller=Caller(buyer=buyer)
        )
        assert isinstance(held, Reservation), held
        return held.id


def who(n: int) -> str:
    return f"grant-{uuid.uuid4().hex[:6]}-{n}"


# The cases: each sets up products and earlier holds, and returns a batch in arrival order.


async def drop(shop: Shop) -> list[Ask]:
    sku = await shop.product(100, limit=1)
    return [Ask(sku, 1, who(i)) for i in range(8)]


async def sold_out_mid_batch(shop: Shop) -> list[Ask]:
    # 3 units, 2 per buyer: one asking above the limit does not count in the line; one
    # asking 2 when 1 is left is refused, and so is everyone behind it in this pass (the
    # caller tries those again: their refusal is not explained by their own numbers).
    sku = await shop.product(3, limit=2)
    return [
        Ask(sku, 1, who(0)),
        Ask(sku, 3, who(1)),
        Ask(sku, 1, who(2)),
        Ask(sku, 2, who(3)),
        Ask(sku, 1, who(4)),
        Ask(sku, 1, who(5)),
    ]


async def anonymous_on_a_limited_product(shop: Shop) -> list[Ask]:
    sku = await shop.product(10, limit=1)
    return [Ask(sku, 1, None), Ask(sku, 1, who(1)), Ask(sku, 1, None), Ask(sku, 1, who(3))]


async def buyers_with_earlier_holds(shop: Shop) -> list[Ask]:
    sku = await shop.product(20, limit=2)
    at_limit, bought, gave_back, fresh = who(0), who(1), who(2), who(3)
    await shop.hold(sku, 2, at_limit)
    bought_id = await shop.hold(sku, 1, bought)
    assert isinstance(await shop.service.confirm(bought_id, caller=Caller(bought)), Reservation)
    part_id = await shop.hold(sku, 2, gave_back)
    released = await shop.service.release(part_id, [LineRequest(sku, 1)], caller=Caller(gave_back))
    assert isinstance(released, Reservation)
    return [
        Ask(sku, 1, at_limit),  # 2 held: refused for the limit
        Ask(sku, 1, bought),  # 1 bought counts: granted, then at the limit
        Ask(sku, 2, gave_back),  # 1 still counted after giving 1 back: refused
        Ask(sku, 2, fresh),
    ]


async def limited_and_unlimited_mixed(shop: Shop) -> list[Ask]:
    capped = await shop.product(5, limit=1)
    free = await shop.product(3)
    return [
        Ask(free, 2, None),
        Ask(capped, 1, who(1)),
        Ask(free, 1, who(2)),
        Ask(capped, 1, None),
        Ask(free, 1, None),  # 3 of 3 gone: refused for the stock
        Ask(capped, 2, who(5)),  # above the limit
        Ask(f"no-such-{uuid.uuid4().hex[:8]}", 1, who(6)),  # no row at all
        Ask(capped, 1, who(7)),
    ]


async def a_queue_waits(shop: Shop) -> list[Ask]:
    # A unit is free but the head of the queue wants 2: nobody else may have it.
    sku = await shop.product(2, limit=2)
    holder, waiting = who(0), who(1)
    hold_id = await shop.hold(sku, 2, holder)
    entry = await shop.service.join_waitlist(sku, 2, caller=Caller(waiting))
    assert isinstance(entry, WaitlistEntry), entry
    released = await shop.service.release(hold_id, [LineRequest(sku, 1)], caller=Caller(holder))
    assert isinstance(released, Reservation)
    return [Ask(sku, 1, who(2)), Ask(sku, 1, holder), Ask(sku, 1, None)]


async def larger_request_first(shop: Shop) -> list[Ask]:
    # 2 left, 3 asked first: it counts in the line (it could alone) and is refused for the
    # stock; so is the next behind it (the caller tries that one again).
    sku = await shop.product(2, limit=3)
    return [Ask(sku, 3, who(0)), Ask(sku, 1, who(1))]


async def a_buyer_twice(shop: Shop) -> list[Ask]:
    # Not a drop's batch: the full statement decides it on either call.
    sku = await shop.product(5, limit=2)
    twice = who(0)
    return [Ask(sku, 1, twice), Ask(sku, 1, who(1)), Ask(sku, 1, twice), Ask(sku, 1, twice)]


# Per case: the ords granted, and which statement the default call (no cap) takes.
CASES: list[tuple[Setup, list[int], str]] = [
    (drop, [1, 2, 3, 4, 5, 6, 7, 8], "drop"),
    (sold_out_mid_batch, [1, 3], "drop"),
    (anonymous_on_a_limited_product, [2, 4], "drop"),
    (buyers_with_earlier_holds, [2, 4], "drop"),
    (limited_and_unlimited_mixed, [1, 2, 3, 8], "drop"),
    (a_queue_waits, [], "drop"),
    (larger_request_first, [], "drop"),
    (a_buyer_twice, [1, 2, 3], "full"),
]


@pytest.fixture
def shop(db, service, make_product) -> Shop:
    return Shop(db, service, make_product)


async def grant(
    db: asyncpg.Connection, asks: list[Ask], ids: list[uuid.UUID], max_pending: int | None
) -> list[asyncpg.Record]:
    return await db.fetch(
        GRANT,
        [a.sku for a in asks],
        [a.quantity for a in asks],
        ids,
        [TTL] * len(asks),
        [a.buyer for a in asks],
        max_pending,
    )


def answers(rows: list[asyncpg.Record]) -> list[tuple[object, ...]]:
    """The rows as the caller reads them: now() differs between the two calls, the hold's
    length does not. pending_after apart (only the forced full statement counts it)."""
    return sorted(
        (
            r["ord"],
            r["sku"],
            r["available_after"],
            r["created_at"] is not None,
            None if r["created_at"] is None else r["expires_at"] - r["created_at"],
            r["purchase_limit"],
            r["held_after"],
        )
        for r in rows
    )


async def state(db: asyncpg.Connection, skus: list[str], ids: list[uuid.UUID]) -> dict[str, object]:
    return {
        "products": [tuple(r) for r in await db.fetch(PRODUCTS, skus)],
        "holds": [tuple(r) for r in await db.fetch(HOLDS, ids)],
        "ledger": [tuple(r) for r in await db.fetch(LEDGER, skus)],
    }


async def statements_run(
    db: asyncpg.Connection, call: Callable[[], Awaitable[object]]
) -> list[str]:
    """Which of grant_singles' statements ran during `call` (auto_explain's notices)."""
    notices: list[str] = []

    def heard(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        notices.append(message.message)

    try:
        await db.execute("LOAD 'auto_explain'")
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("auto_explain needs a superuser to load")
    await db.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_level = notice"
    )
    db.add_log_listener(heard)
    try:
        await call()
    finally:
        db.remove_log_listener(heard)
        await db.execute("SET auto_explain.log_min_duration = -1")
    return [path for path, text in PATHS.items() if any(text in n for n in notices)]


async def decided_alike(
    db: asyncpg.Connection, asks: list[Ask], path: str | None = None
) -> list[asyncpg.Record]:
    """The default call's rows, after checking them and what they left against the full
    statement's on the same state, and against the database; with `path`, that the
    default call took that statement."""
    skus = sorted({a.sku for a in asks})
    ids = [uuid.uuid4() for _ in asks]
    before = {r["sku"]: r for r in await db.fetch(PRODUCTS, skus)}

    undo = db.transaction()
    await undo.start()
    try:
        full_rows = await grant(db, asks, ids, NEVER_BINDS)
        full_state = await state(db, skus, ids)
    finally:
        await undo.rollback()

    rows: list[asyncpg.Record] = []

    async def default_call() -> None:
        rows.extend(await grant(db, asks, ids, None))

    if path is None:
        await default_call()
    else:
        assert await statements_run(db, default_call) == [path]
    assert answers(rows) == answers(full_rows)
    assert all(r["pending_after"] is None for r in rows)
    assert await state(db, skus, ids) == full_state

    # What the rows say is what the database holds.
    holds = {r["id"]: r for r in await db.fetch(HOLDS, ids)}
    assert set(holds) == {ids[r["ord"] - 1] for r in rows if r["created_at"] is not None}
    after = {r["sku"]: r for r in await db.fetch(PRODUCTS, skus)}
    for row in rows:
        ask = asks[row["ord"] - 1]
        product = after[ask.sku]
        available = 0 if product["waiting"] else product["quantity"] - product["reserved"]
        assert row["available_after"] == available
        if (hold := holds.get(ids[row["ord"] - 1])) is not None:
            assert (hold["buyer"], hold["status"], hold["sku"], hold["quantity"]) == (
                ask.buyer,
                "PENDING",
                ask.sku,
                ask.quantity,
            )
            assert hold["ttl"] == timedelta(seconds=TTL)
        if row["purchase_limit"] is not None and ask.buyer is not None:
            assert row["held_after"] == await db.fetchval(TALLY, ask.buyer, ask.sku)
            assert row["held_after"] <= row["purchase_limit"] or row["created_at"] is None
        else:
            assert row["held_after"] is None
        if row["purchase_limit"] is not None and ask.buyer is None:
            assert row["created_at"] is None  # BuyerRequired, from these numbers
    for sku, product in after.items():
        held = sum(asks[r["ord"] - 1].quantity for r in rows if r["sku"] == sku and r["created_at"])
        assert product["reserved"] == before[sku]["reserved"] + held
    # A request for a sku with no product gets no row (the caller answers ProductNotFound).
    assert sorted(r["ord"] for r in rows) == [i + 1 for i, a in enumerate(asks) if a.sku in after]
    return rows


@pytest.mark.parametrize(("setup", "granted", "path"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_a_drops_batch_answers_as_the_full_statement(
    db: asyncpg.Connection, shop: Shop, setup: Setup, granted: list[int], path: str
) -> None:
    rows = await decided_alike(db, await setup(shop), path)
    assert sorted(r["ord"] for r in rows if r["created_at"] is not None) == granted
    report = await reconcile(db, 3600)
    assert report.ok, report.problems


# Random batches: products with and without a limit, buyers with earlier holds (held,
# bought, partly given back), anonymous requests, stock that runs out, and now and then a
# buyer twice (then the full statement decides both calls).
PRODUCT_SPECS = st.lists(
    st.tuples(st.integers(0, 6), st.sampled_from([None, 1, 2, 3])), min_size=1, max_size=3
)
EARLIER = st.lists(
    st.tuples(
        st.integers(0, 2),  # product
        st.integers(0, 3),  # buyer
        st.integers(1, 2),  # units
        st.sampled_from(["held", "bought", "gave one back"]),
    ),
    max_size=5,
)
BATCH = st.lists(
    st.tuples(
        st.integers(0, 3),  # product (3: none such)
        st.integers(1, 3),  # units
        # buyer: anonymous, one with earlier holds (0-3), or one new to the product
        st.one_of(st.none(), st.integers(0, 3), st.just("new")),
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(products=PRODUCT_SPECS, earlier=EARLIER, batch=BATCH, twice=st.booleans())
async def test_random_batches_answer_as_the_full_statement(
    db: asyncpg.Connection,
    shop: Shop,
    products: list[tuple[int, int | None]],
    earlier: list[tuple[int, int, int, str]],
    batch: list[tuple[int, int, int | str | None]],
    twice: bool,
) -> None:
    skus = [await shop.product(stock, limit) for stock, limit in products]
    buyers = [who(n) for n in range(12)]
    for product, buyer_number, units, how in earlier:
        if product >= len(skus):
            continue
        sku, buyer = skus[product], buyers[buyer_number]
        held = await shop.service.reserve(
            [LineRequest(sku, units)], ttl_seconds=600, caller=Caller(buyer)
        )
        if not isinstance(held, Reservation):
            continue  # the limit or the stock said no: nothing to set up
        if how == "bought":
            assert isinstance(
                await shop.service.confirm(held.id, caller=Caller(buyer)), Reservation
            )
        elif how == "gave one back":
            gave = await shop.service.release(held.id, [LineRequest(sku, 1)], caller=Caller(buyer))
            assert isinstance(gave, Reservation)
    missing = f"no-such-{uuid.uuid4().hex[:8]}"
    asks: list[Ask] = []
    seen: set[int] = set()
    for wanted, quantity, asker in batch:
        named: str | None = None
        if asker == "new" or (isinstance(asker, int) and asker in seen and not twice):
            named = who(len(seen) + 100)  # another buyer: a drop's batch
        elif isinstance(asker, int):
            named = buyers[asker]
            seen.add(asker)
        asks.append(Ask(skus[wanted] if wanted < len(skus) else missing, quantity, named))
    limited = {sku for sku, (_, limit) in zip(skus, products, strict=True) if limit is not None}
    asking = [a.buyer for a in asks if a.buyer is not None]
    event(
        "a drop's batch"
        if len(set(asking)) == len(asking) and limited & {a.sku for a in asks}
        else "another batch"
    )
    await decided_alike(db, asks)
