"""Mailbox: what one live subscriber is handed. Per sku the latest state wins, versions
never go back, and a slow reader's backlog is bounded by its skus, not by the traffic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from inventory_graphql.inventory.models import StockLevel
from inventory_graphql.live.mailbox import Mailbox

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def level(sku: str, version: int, reserved: int = 0) -> StockLevel:
    return StockLevel(sku, 100, reserved, version, EPOCH + timedelta(seconds=version))


async def waiting(mailbox: Mailbox) -> asyncio.Task[list[StockLevel]]:
    """A reader blocked in take(); the loop has run long enough for it to wait."""
    task = asyncio.create_task(mailbox.take())
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def test_take_returns_what_was_offered() -> None:
    mailbox = Mailbox(frozenset({"A"}))
    mailbox.offer(level("A", 1, reserved=3))
    assert await mailbox.take() == [level("A", 1, reserved=3)]
    assert mailbox.pending == 0


async def test_a_reader_waiting_in_take_wakes_on_an_offer() -> None:
    mailbox = Mailbox(frozenset({"A"}))
    reader = await waiting(mailbox)
    assert not reader.done()
    mailbox.offer(level("A", 1))
    assert await asyncio.wait_for(reader, 1) == [level("A", 1)]


async def test_latest_wins_per_sku() -> None:
    mailbox = Mailbox(frozenset({"A", "B"}))
    for version in range(1, 6):
        mailbox.offer(level("A", version, reserved=version))
    mailbox.offer(level("B", 7))
    assert mailbox.pending == 2
    assert await mailbox.take() == [level("A", 5, reserved=5), level("B", 7)]


async def test_an_older_or_repeated_version_is_never_delivered() -> None:
    """A duplicate notification or a resync's stale read must not move a page backwards,
    neither before the newer state was taken nor after."""
    mailbox = Mailbox(frozenset({"A"}))
    mailbox.offer(level("A", 5))
    mailbox.offer(level("A", 3))
    mailbox.offer(level("A", 5, reserved=9))  # same version, other numbers: still not news
    assert await mailbox.take() == [level("A", 5)]

    mailbox.offer(level("A", 4))
    mailbox.offer(level("A", 5))
    assert mailbox.pending == 0
    reader = await waiting(mailbox)
    assert not reader.done(), "take() returned with nothing new"
    mailbox.offer(level("A", 6))
    assert await asyncio.wait_for(reader, 1) == [level("A", 6)]


async def test_versions_are_per_sku() -> None:
    mailbox = Mailbox(frozenset({"A", "B"}))
    mailbox.offer(level("A", 100))
    mailbox.offer(level("B", 1))
    assert await mailbox.take() == [level("A", 100), level("B", 1)]


async def test_take_hands_over_skus_in_the_order_they_first_changed() -> None:
    mailbox = Mailbox(frozenset({"A", "B", "C"}))
    mailbox.offer(level("C", 1))
    mailbox.offer(level("A", 1))
    mailbox.offer(level("B", 1))
    mailbox.offer(level("C", 2))  # C changed again, still first in line
    assert [x.sku for x in await mailbox.take()] == ["C", "A", "B"]


async def test_a_slow_reader_holds_one_update_per_sku_however_much_changes() -> None:
    skus = [f"S{i}" for i in range(10)]
    mailbox = Mailbox(frozenset(skus))
    for version in range(1, 1001):
        for sku in skus:
            mailbox.offer(level(sku, version))
        assert mailbox.pending <= len(skus)
    assert await mailbox.take() == [level(sku, 1000) for sku in skus]


@given(st.lists(st.tuples(st.sampled_from("ABC"), st.integers(1, 20), st.booleans()), max_size=60))
def test_whatever_the_interleaving_a_reader_sees_each_sku_rise_and_end_at_its_newest(
    steps: list[tuple[str, int, bool]],
) -> None:
    """Offers arrive in any order (duplicates, stale ones), the reader takes at any point:
    per sku it sees strictly rising versions and, at the end, the highest one offered."""

    async def run() -> None:
        mailbox = Mailbox(frozenset("ABC"))
        delivered: dict[str, list[int]] = {sku: [] for sku in "ABC"}

        async def drain() -> None:
            if mailbox.pending:
                for update in await mailbox.take():
                    delivered[update.sku].append(update.version)

        for sku, version, take_now in steps:
            mailbox.offer(level(sku, version))
            if take_now:
                await drain()
        await drain()
        for sku, versions in delivered.items():
            assert versions == sorted(set(versions)), (sku, versions)
            offered = [v for s, v, _ in steps if s == sku]
            assert versions[-1:] == ([max(offered)] if offered else [])

    asyncio.run(run())
