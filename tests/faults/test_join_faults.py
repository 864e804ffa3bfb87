"""A waiting-list join whose connection breaks after its INSERT reached the server: the
client is told the entry, and the database has it; or the retriable error, and the
database has no live entry of that join (none WAITING, no offered hold PENDING), now or
later. When the database cannot be asked at once, the join is given back once it can.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from inventory_graphql.inventory import waitlist as waitlist_module
from inventory_graphql.inventory.errors import is_database_unavailable
from inventory_graphql.inventory.join_give_back import JoinGiveBack
from inventory_graphql.inventory.models import (
    Caller,
    LineRequest,
    Reservation,
    WaitlistEntry,
    WaitlistEntryNotFound,
    WaitlistStatus,
)
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.inventory.waitlist import Waitlist
from tests.support.database import check

BUYER = Caller(buyer="buyer-join-fault")
Work = Callable[[Any], Awaitable[Any]]


async def queued_product(service: InventoryService, make_product, waiting: bool) -> str:
    """A sku whose join waits (sold out), or is offered its hold at once (units there)."""
    sku = await make_product(2)
    if waiting:
        assert isinstance(await service.reserve([LineRequest(sku, 2)], 600), Reservation)
    return sku


async def live_entries(db: asyncpg.Connection, sku: str) -> list[asyncpg.Record]:
    """The buyer's entries of the sku that still wait or hold (an offered hold PENDING)."""
    return await db.fetch(
        """
        SELECT w.id, w.status::text AS status FROM waitlist_entry w
        JOIN product p ON p.id = w.product_id
        LEFT JOIN reservation r ON r.id = w.reservation_id
        WHERE p.sku = $1 AND w.buyer = $2
          AND (w.status = 'WAITING' OR (w.status = 'OFFERED' AND r.status = 'PENDING'))
        """,
        sku,
        BUYER.buyer,
    )


async def assert_consistent(db: asyncpg.Connection, sku: str) -> None:
    row = await db.fetchrow(
        """
        SELECT p.waiting, coalesce(sum(w.quantity) FILTER (WHERE w.status = 'WAITING'), 0)
               AS wanted
        FROM product p LEFT JOIN waitlist_entry w ON w.product_id = p.id
        WHERE p.sku = $1 GROUP BY p.id
        """,
        sku,
    )
    assert row is not None
    assert row["waiting"] == row["wanted"], dict(row)
    assert (await check(db)).ok


def breaking(monkeypatch, db: asyncpg.Connection, commit: bool) -> None:
    """The join's transaction runs on a pool connection; once its statements are done its
    backend is terminated, before COMMIT (nothing committed) or just after it."""

    async def in_transaction(pool: asyncpg.Pool, work: Work) -> Any:
        async with pool.acquire() as conn, conn.transaction():
            await work(conn)
            if commit:
                await conn.execute("COMMIT")
            await db.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await asyncio.sleep(0.1)  # the line is dead: COMMIT (or its answer) is lost
        raise AssertionError("the connection was terminated")

    monkeypatch.setattr(waitlist_module, "in_transaction", in_transaction, raising=True)


def in_doubt(monkeypatch, database_url: str, commit: bool, ended: list[asyncio.Task[None]]) -> None:
    """The client's line breaks while the join's transaction is still open on the server:
    it commits (or rolls back) only later, while the join is being settled."""

    async def in_transaction(pool: asyncpg.Pool, work: Work) -> Any:
        conn = await asyncpg.connect(database_url)
        transaction = conn.transaction()
        await transaction.start()
        await work(conn)

        async def end() -> None:
            await asyncio.sleep(0.3)
            await (transaction.commit() if commit else transaction.rollback())
            await conn.close()

        ended.append(asyncio.create_task(end()))
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    monkeypatch.setattr(waitlist_module, "in_transaction", in_transaction, raising=True)


async def told_is_held(
    service: InventoryService, db: asyncpg.Connection, sku: str, outcome: object
) -> None:
    """An entry answered is in the database as told; an error leaves nothing live."""
    live = await live_entries(db, sku)
    if isinstance(outcome, WaitlistEntry):
        assert [(str(r["id"]), r["status"]) for r in live] == [(outcome.id, outcome.status.value)]
        assert await service.waitlist_entry(outcome.id, caller=BUYER) == outcome
    else:
        assert isinstance(outcome, Exception) and is_database_unavailable(outcome), outcome
        assert live == []
    await assert_consistent(db, sku)


async def join_outcome(service: InventoryService, sku: str) -> object:
    try:
        return await service.join_waitlist(sku, 1, caller=BUYER)
    except Exception as error:
        return error


@pytest.mark.parametrize("waiting", [True, False], ids=["waiting", "offered"])
@pytest.mark.parametrize("commit", [True, False], ids=["committed", "rolled-back"])
async def test_a_join_terminated_at_commit_is_told_as_held(
    service, db, make_product, monkeypatch, waiting, commit
):
    sku = await queued_product(service, make_product, waiting)
    breaking(monkeypatch, db, commit)
    outcome = await join_outcome(service, sku)
    status = WaitlistStatus.WAITING if waiting else WaitlistStatus.OFFERED
    if commit:  # read back: the entry is answered, not an error
        assert isinstance(outcome, WaitlistEntry) and outcome.status is status, outcome
    else:
        assert isinstance(outcome, Exception), outcome
    await told_is_held(service, db, sku, outcome)
    if not waiting and not commit:  # the units were not offered to anyone
        assert (await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku)) == 0


@pytest.mark.parametrize("commit", [True, False], ids=["committed", "rolled-back"])
async def test_a_join_still_open_is_waited_for_by_its_settle(
    service, db, database_url, make_product, monkeypatch, commit
):
    sku = await queued_product(service, make_product, waiting=True)
    ended: list[asyncio.Task[None]] = []
    in_doubt(monkeypatch, database_url, commit, ended)
    outcome = await join_outcome(service, sku)
    await asyncio.gather(*ended)
    assert isinstance(outcome, WaitlistEntry) is commit, outcome
    await told_is_held(service, db, sku, outcome)


async def test_a_void_join_is_shown_nowhere_and_can_never_be_made(
    service, db, make_product, monkeypatch
):
    sku = await queued_product(service, make_product, waiting=True)
    breaking(monkeypatch, db, commit=False)
    assert isinstance(await join_outcome(service, sku), Exception)
    monkeypatch.undo()
    void = await db.fetchval(
        "SELECT id::text FROM waitlist_entry WHERE buyer = $1 AND status = 'VOID' "
        "AND product_id = (SELECT id FROM product WHERE sku = $2)",
        BUYER.buyer,
        sku,
    )
    assert void is not None
    assert await service.waitlist_entry(void, caller=BUYER) is None
    assert await service.leave_waitlist(void, caller=BUYER) == WaitlistEntryNotFound(void)
    # The retried join is a join of its own, first in line; the VOID row is in no queue.
    entry = await service.join_waitlist(sku, 1, caller=BUYER)
    assert isinstance(entry, WaitlistEntry) and entry.position == 1
    assert await service.waitlist_positions(sku, 0.0) == {entry.id: 1}
    with pytest.raises(asyncpg.exceptions.UniqueViolationError):  # a late commit fails
        await db.execute(
            "INSERT INTO waitlist_entry (id, product_id, buyer, quantity) "
            "SELECT $1, id, 'late', 1 FROM product WHERE sku = $2",
            uuid.UUID(void),
            sku,
        )
    await assert_consistent(db, sku)


# The database away during the settle: given back in the background.


class Away:
    """A pool while the database is away: no connection to be had."""

    def acquire(self) -> Any:
        raise ConnectionRefusedError("the database is away")


class Flaky:
    """A pool whose first `failures` acquires fail, as while the database comes back."""

    def __init__(self, pool: asyncpg.Pool, failures: int) -> None:
        self._pool, self.failures = pool, failures

    def acquire(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("the database is away")
        return self._pool.acquire()


def joined_then_away(monkeypatch, pool: asyncpg.Pool, commit: bool) -> None:
    """The join runs (and commits, or not) on the real pool; then its line breaks, and
    the database cannot be reached to settle it."""

    async def in_transaction(_: object, work: Work) -> Any:
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await work(conn)
            await (transaction.commit() if commit else transaction.rollback())
        raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")

    monkeypatch.setattr(waitlist_module, "in_transaction", in_transaction, raising=True)


@pytest.mark.parametrize("waiting", [True, False], ids=["waiting", "offered"])
@pytest.mark.parametrize("commit", [True, False], ids=["committed", "rolled-back"])
async def test_a_join_that_cannot_be_settled_is_given_back(
    service, pool, db, make_product, monkeypatch, waiting, commit
):
    sku = await queued_product(service, make_product, waiting)
    give_back = JoinGiveBack(pool)
    away = Waitlist(Away(), give_back)  # type: ignore[arg-type]
    joined_then_away(monkeypatch, pool, commit)
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await away.join(sku, 1, BUYER.buyer or "")
    assert give_back.waiting == 1
    assert len(await live_entries(db, sku)) == int(commit)  # held, though told otherwise

    await give_back.drain()  # the database answers again
    assert give_back.waiting == 0 and give_back.undone_total == int(commit)
    assert await live_entries(db, sku) == []  # told nothing done: nothing is
    statuses = await db.fetch(
        "SELECT w.status::text, r.status::text AS hold FROM waitlist_entry w "
        "LEFT JOIN reservation r ON r.id = w.reservation_id "
        "WHERE w.buyer = $1 AND w.product_id = (SELECT id FROM product WHERE sku = $2)",
        BUYER.buyer,
        sku,
    )
    expected = ("LEFT", None) if waiting else ("OFFERED", "RELEASED")
    assert [tuple(r) for r in statuses] == [expected if commit else ("VOID", None)]
    if not waiting:  # the offered units are back
        assert (await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku)) == 0
    await assert_consistent(db, sku)
    await give_back.drain()  # again: nothing more to do
    assert give_back.undone_total == int(commit)


async def test_a_retried_join_keeps_the_entry_it_was_told(
    service, pool, db, make_product, monkeypatch
):
    """The client retried (as the error asks) before the give-back ran, and was answered
    the entry: it is known now, and stays."""
    sku = await queued_product(service, make_product, waiting=True)
    give_back = JoinGiveBack(pool)
    joined_then_away(monkeypatch, pool, commit=True)
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await Waitlist(Away(), give_back).join(sku, 1, BUYER.buyer or "")  # type: ignore[arg-type]
    monkeypatch.undo()
    retried = await service.join_waitlist(sku, 1, caller=BUYER)
    assert isinstance(retried, WaitlistEntry) and retried.status is WaitlistStatus.WAITING

    await give_back.drain()
    assert give_back.undone_total == 0
    assert await service.waitlist_entry(retried.id, caller=BUYER) == retried
    await told_is_held(service, db, sku, retried)


async def test_the_give_back_retries_until_the_database_answers(
    service, pool, db, make_product, monkeypatch
):
    sku = await queued_product(service, make_product, waiting=True)
    flaky = Flaky(pool, failures=2)
    give_back = JoinGiveBack(flaky, max_backoff=0.05)  # type: ignore[arg-type]
    joined_then_away(monkeypatch, pool, commit=True)
    async with give_back.running():
        with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
            await Waitlist(Away(), give_back).join(sku, 1, BUYER.buyer or "")  # type: ignore[arg-type]
        for _ in range(200):
            if give_back.waiting == 0:
                break
            await asyncio.sleep(0.01)
    assert flaky.failures == 0 and give_back.waiting == 0 and give_back.undone_total == 1
    assert await live_entries(db, sku) == []
    await assert_consistent(db, sku)
