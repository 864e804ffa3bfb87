"""Coalesced reservations: one transaction per batch, each request its own answer."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import asyncpg
import pytest

from inventory_graphql.inventory.coalescer import ReservationCoalescer
from inventory_graphql.inventory.contention import Contention
from inventory_graphql.inventory.give_back import GiveBack
from inventory_graphql.inventory.models import (
    InsufficientStock,
    LineRequest,
    ProductNotFound,
    Reservation,
)
from inventory_graphql.inventory.reservations import Reservations
from tests.support.database import check, ledger, stock, told_equals_held


@pytest.fixture
def give_back(pool) -> GiveBack:
    return GiveBack(Reservations(pool, 600))


def coalescer_of(pool, give_back, **options) -> ReservationCoalescer:
    """A coalescer of its own, on the pool the service would give it."""
    return ReservationCoalescer(
        pool,
        Reservations(pool, 600),
        give_back,
        Contention(),
        **{"max_batch": 256, "max_queued": 10_000, **options},
    )


@pytest.fixture
async def coalescer(pool, give_back):
    running = coalescer_of(pool, give_back)
    async with give_back.running(), running.running():
        yield running


async def test_requests_queued_together_share_one_transaction(coalescer, db, make_product):
    sku = await make_product(3)
    # Queued in one tick, so they form one batch: FIFO, each refused one answered alone.
    outcomes = await asyncio.gather(
        coalescer.reserve([LineRequest(sku, 2)], 600),
        coalescer.reserve([LineRequest(sku, 2)], 600),  # does not fit after the first
        coalescer.reserve([LineRequest(sku, 1)], 600),  # fits: FIFO does not block it
        coalescer.reserve([LineRequest("NOPE-none", 1)], 600),
        coalescer.reserve([LineRequest(sku, 1)], 600),  # sold out by now
    )
    assert coalescer.batches == 1 and coalescer.batched_requests == 5
    assert isinstance(outcomes[0], Reservation) and isinstance(outcomes[2], Reservation)
    # Each refusal tells the numbers of the pass that refused it: after the first grant.
    assert outcomes[1] == InsufficientStock(sku, 2, 1)
    assert outcomes[3] == ProductNotFound("NOPE-none")
    assert outcomes[4] == InsufficientStock(sku, 1, 0)
    assert await stock(db, sku) == {"quantity": 3, "reserved": 3, "available": 0, "version": 3}
    assert await ledger(db, sku) == [("CREATE", 3, 0), ("RESERVE", 0, 2), ("RESERVE", 0, 1)]
    assert (await check(db)).ok


async def test_an_idle_service_answers_a_lone_request_in_a_batch_of_one(coalescer, make_product):
    sku = await make_product(1)
    assert isinstance(await coalescer.reserve([LineRequest(sku, 1)], 600), Reservation)
    assert (coalescer.batches, coalescer.batched_requests) == (1, 1)


async def test_carts_in_a_batch_are_all_or_nothing_in_fifo_order(coalescer, db, make_product):
    a, b = await make_product(3), await make_product(1)
    outcomes = await asyncio.gather(
        coalescer.reserve([LineRequest(a, 1)], 600),
        coalescer.reserve([LineRequest(b, 1), LineRequest(a, 1)], 600),  # takes the last b
        coalescer.reserve([LineRequest(a, 1), LineRequest(b, 1)], 600),  # b is gone: nothing held
        coalescer.reserve([LineRequest(a, 1)], 600),  # the last a
    )
    assert coalescer.batches == 1
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["Reservation", "Reservation", "InsufficientStock", "Reservation"]
    # The refusal names the line that did not fit, as it stood under that row's lock.
    assert outcomes[2] == InsufficientStock(b, 1, 0)
    assert (await stock(db, a))["reserved"] == 3 and (await stock(db, b))["reserved"] == 1
    assert (await check(db)).ok


@pytest.mark.parametrize("path", ["_fetch_alone", "_grant"])
async def test_a_failing_batch_does_not_fail_its_requests(
    coalescer, db, make_product, monkeypatch, path
):
    sku, other = await make_product(2), await make_product(5)
    failures: list[str] = []
    working = getattr(coalescer, path)

    async def broken(*args):
        if failures:
            return await working(*args)
        failures.append(path)
        raise RuntimeError("simulated failure inside the batch")

    monkeypatch.setattr(coalescer, path, broken)
    requests = [[LineRequest(sku, 1)] for _ in range(3)]
    if path == "_grant":  # a batch with a cart takes the transaction path
        requests.append([LineRequest(other, 1), LineRequest(sku, 1)])
    outcomes = await asyncio.gather(*(coalescer.reserve(lines, 600) for lines in requests))

    assert failures == [path], "the batch failed once, then each request was retried alone"
    assert Counter(type(o).__name__ for o in outcomes) == {
        "Reservation": 2,
        "InsufficientStock": len(requests) - 2,
    }
    # Answered alone, concurrently: any two of them get the two units of `sku`.
    granted = [
        lines for lines, o in zip(requests, outcomes, strict=True) if isinstance(o, Reservation)
    ]
    assert (await stock(db, sku))["reserved"] == 2
    assert (await stock(db, other))["reserved"] == sum(len(lines) == 2 for lines in granted)
    assert (await check(db)).ok


async def test_mixed_singles_and_carts_on_hot_products_never_oversell(
    coalescer, service, pool, give_back, db, make_product
):
    # Two coalescers, as two server processes would run: batches of single lines (one
    # self-committing statement each) and batches with carts (a transaction) interleave
    # on the same rows.
    second = coalescer_of(pool, give_back)
    async with second.running():
        await _mixed_singles_and_carts(coalescer, second, service, db, make_product)


async def _mixed_singles_and_carts(coalescer, second, service, db, make_product):
    hot = [await make_product(150) for _ in range(3)]
    random.seed(11)
    shapes = []
    for _ in range(900):
        k = random.choice([1, 1, 1, 2, 3])
        shapes.append([LineRequest(s, random.randint(1, 2)) for s in random.sample(hot, k)])

    async def shopper(lines, via):
        await asyncio.sleep(random.random() / 50)  # arrive spread out, in many batches
        return await via.reserve(lines, 600)

    outcomes = await asyncio.gather(
        *(shopper(lines, (coalescer, second)[i % 2]) for i, lines in enumerate(shapes))
    )

    held: Counter[str] = Counter()
    for lines, outcome in zip(shapes, outcomes, strict=True):
        assert isinstance(outcome, Reservation | InsufficientStock), outcome
        if isinstance(outcome, Reservation):
            assert sorted((x.sku, x.quantity) for x in outcome.lines) == sorted(
                (x.sku, x.quantity) for x in lines
            )
            held.update({line.sku: line.quantity for line in lines})
    for sku in hot:
        row = await stock(db, sku)
        assert row["reserved"] == held[sku] <= 150
    assert min([(await stock(db, sku))["available"] for sku in hot]) <= 1, "stock ran out"
    assert coalescer.batches + second.batches < len(shapes), "requests were coalesced"
    # Release half, confirm the rest: stock comes back and leaves exactly.
    for i, outcome in enumerate(o for o in outcomes if isinstance(o, Reservation)):
        resolve = service.release if i % 2 else service.confirm
        assert isinstance(await resolve(outcome.id), Reservation)
    assert [(await stock(db, sku))["reserved"] for sku in hot] == [0, 0, 0]
    assert (await check(db)).ok


# Told equals held: what each caller is told is what the database holds, whatever commits
# between a batch's passes and whatever breaks in the middle of one.


def after_first_pass(coalescer, step):
    """Run `step` once, after the batch's first grant pass has committed and before the
    next statement: deterministic, no sleeps."""
    passes = coalescer._fetch_alone
    ran: list[object] = []

    async def pass_then_step(query, *args):
        rows = await passes(query, *args)
        if not ran:
            ran.append(await step())
        return rows

    coalescer._fetch_alone = pass_then_step
    return ran


async def test_stock_coming_back_between_passes_changes_no_answer(
    coalescer, service, db, make_product
):
    sku = await make_product(5)
    # [3, 4, 1] against 5: pass 1 grants 3 (the 4 does not fit, so neither does the 1 in
    # FIFO order); then 5 are restocked; pass 2 grants the 1. Before, the 4 then looked
    # grantable, an assertion failed and every request was reserved again (two orphans).
    ran = after_first_pass(
        coalescer, lambda: service.adjust_stock(sku, 5, "restock between passes")
    )
    outcomes = await asyncio.gather(
        *(coalescer.reserve([LineRequest(sku, n)], 600) for n in (3, 4, 1))
    )
    assert ran and coalescer.batches == 1
    assert isinstance(outcomes[0], Reservation) and isinstance(outcomes[2], Reservation)
    assert outcomes[1] == InsufficientStock(sku, 4, 2)  # true when pass 1 refused it
    assert await stock(db, sku) == {"quantity": 10, "reserved": 4, "available": 6, "version": 4}
    await told_equals_held(db, [sku], outcomes)
    assert (await check(db)).ok


async def test_a_cancelled_second_pass_answers_what_the_first_committed(
    coalescer, service, db, database_url, make_product
):
    sku = await make_product(5)
    blocker = await asyncpg.connect(database_url)
    block = blocker.transaction()

    async def lock_the_row():
        await block.start()
        await blocker.execute("SELECT 1 FROM product WHERE sku = $1 FOR UPDATE", sku)

    after_first_pass(coalescer, lock_the_row)
    answers = asyncio.gather(*(coalescer.reserve([LineRequest(sku, n)], 600) for n in (3, 4, 1)))
    # Pass 2 now waits for the row: cancel it, as pg_cancel_backend or a failover would.
    for _ in range(500):
        cancelled = await db.fetchval(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'inventory-graphql' AND wait_event_type = 'Lock'"
        )
        if cancelled:
            break
        await asyncio.sleep(0.01)
    assert cancelled, "the second pass never waited on the row"
    await block.rollback()
    await blocker.close()
    outcomes = await answers
    # The first pass's hold is answered as held (before: 503 for every request, and the
    # shopper's retry refused because of its own orphan); the cancelled request is
    # retried and held, never twice.
    assert isinstance(outcomes[0], Reservation) and isinstance(outcomes[2], Reservation)
    assert outcomes[1] == InsufficientStock(sku, 4, 2)
    assert (await stock(db, sku))["reserved"] == 4
    await told_equals_held(db, [sku], outcomes)
    assert (await check(db)).ok


@pytest.mark.parametrize("path", ["singles", "carts"])
async def test_a_connection_lost_after_commit_answers_the_committed_holds(
    coalescer, service, db, make_product, monkeypatch, path
):
    sku, other = await make_product(10), await make_product(10)
    requests = [[LineRequest(sku, 1)], [LineRequest(sku, 2)]]
    if path == "carts":
        requests.append([LineRequest(other, 1), LineRequest(sku, 3)])
        work = coalescer._grant

        async def grant_commit_then_lose(conn, batch):
            await work(conn, batch)
            await conn.execute("COMMIT")  # the batch commits, and then the line goes dead
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

        monkeypatch.setattr(coalescer, "_grant", grant_commit_then_lose)
    else:
        passes = coalescer._fetch_alone
        lost: list[bool] = []

        async def pass_commit_then_lose(query, *args):
            rows = await passes(query, *args)
            if not lost:
                lost.append(True)
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
            return rows

        monkeypatch.setattr(coalescer, "_fetch_alone", pass_commit_then_lose)

    outcomes = await asyncio.gather(*(coalescer.reserve(lines, 600) for lines in requests))

    # Read back, not re-run: each request held once, as it was told.
    assert all(isinstance(o, Reservation) for o in outcomes), outcomes
    assert (await stock(db, sku))["reserved"] == sum(r[-1].quantity for r in requests)
    await told_equals_held(db, [sku, other], outcomes)
    assert (await check(db)).ok


async def test_a_pool_connection_that_breaks_on_its_way_back_changes_no_result(
    service, pool, db, make_product
):
    sku = await make_product(3)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
        await db.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await asyncio.sleep(0.1)
    # No error on release; the pool replaced the connection and keeps serving.
    assert isinstance(await service.reserve([LineRequest(sku, 1)]), Reservation)
