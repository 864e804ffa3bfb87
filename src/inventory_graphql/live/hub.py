"""Fans availability changes out to the subscribers of this process.

One broadcaster subscription per process feeds the hub; the hub hands each change to the
mailboxes watching its sku. On a RESYNC (the listener reconnected and may have missed
notifications) it re-reads every watched sku from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime

from broadcaster import Broadcast

from inventory_graphql.background import background
from inventory_graphql.inventory.models import Product, StockLevel
from inventory_graphql.live.channel import CHANNEL
from inventory_graphql.live.listener import RESYNC
from inventory_graphql.live.mailbox import Mailbox

log = logging.getLogger(__name__)


def parse_payload(payload: str) -> list[StockLevel]:
    """The trigger's payload: a JSON array of [sku, quantity, reserved, version, updated_at,
    waiting] (`waiting` since migration 006; a five-item entry means none waits).

    Raises ValueError or TypeError for anything else (a hand-made NOTIFY), so that a
    wrongly typed number never reaches a subscriber.
    """
    levels = []
    for entry in json.loads(payload):
        if not isinstance(entry, list) or len(entry) not in (5, 6):
            raise TypeError(
                f"not [sku, quantity, reserved, version, updated_at, waiting]: {entry!r}"
            )
        sku, quantity, reserved, version, updated_at, *rest = entry
        waiting = rest[0] if rest else 0
        numbers = (quantity, reserved, version, waiting)
        if not isinstance(sku, str) or not all(
            type(n) is int
            for n in numbers  # bool is an int subclass: not a number here
        ):
            raise TypeError(f"not [sku, quantity, reserved, version, updated_at, waiting]: {sku!r}")
        levels.append(
            StockLevel(
                sku, quantity, reserved, version, datetime.fromisoformat(updated_at), waiting
            )
        )
    return levels


ReadProducts = Callable[[Sequence[str], int], Awaitable[list[Product]]]  # (skus, first)

RESYNC_ATTEMPTS = 30


class AvailabilityHub:
    def __init__(self, broadcast: Broadcast, read_products: ReadProducts) -> None:
        self._broadcast = broadcast
        self._read_products = read_products
        self._watchers: dict[str, set[Mailbox]] = defaultdict(set)
        self._mailboxes: set[Mailbox] = set()
        # Per watched sku, the newest version this hub has from the database or a
        # notification that followed it: what a new notification must follow.
        self._known: dict[str, int] = {}
        self.resyncs = 0
        self.checked = 0  # notifications checked against the database
        # Set on every notification (and resync), whatever its skus: the stock event
        # feed's wake-up (every event's transaction updates a product, so notifies).
        self._commit_flags: set[asyncio.Event] = set()

    @property
    def subscriptions(self) -> int:
        return len(self._mailboxes)

    @property
    def watched_skus(self) -> int:
        return len(self._watchers)

    @property
    def pending_updates(self) -> int:
        return sum(mailbox.pending for mailbox in self._mailboxes)

    @contextlib.contextmanager
    def watch(self, skus: Iterable[str]) -> Iterator[Mailbox]:
        """A mailbox that receives every change to `skus` until the block exits."""
        mailbox = Mailbox(frozenset(skus))
        self._mailboxes.add(mailbox)
        for sku in mailbox.skus:
            self._watchers[sku].add(mailbox)
        try:
            yield mailbox
        finally:
            self._mailboxes.discard(mailbox)
            for sku in mailbox.skus:
                watchers = self._watchers.get(sku)
                if watchers is not None:
                    watchers.discard(mailbox)
                    if not watchers:
                        del self._watchers[sku]
                        self._known.pop(sku, None)

    @contextlib.contextmanager
    def commits(self) -> Iterator[asyncio.Event]:
        """A flag set whenever a change to any product was notified, until the block
        exits (the holder clears it; many notifications between two looks set it once)."""
        flag = asyncio.Event()
        self._commit_flags.add(flag)
        try:
            yield flag
        finally:
            self._commit_flags.discard(flag)

    def publish(self, levels: Iterable[StockLevel]) -> None:
        watched = [level for level in levels if level.sku in self._watchers]
        if len(watched) == 1:
            for mailbox in self._watchers[watched[0].sku]:
                mailbox.offer(watched[0])
            return
        # A mailbox gets what was published together in one offer: a subscriber of several
        # of these skus is sent them as one delivery (its pause starts after all of them).
        batches: dict[Mailbox, list[StockLevel]] = {}
        for level in watched:
            for mailbox in self._watchers[level.sku]:
                if (batch := batches.get(mailbox)) is None:
                    batches[mailbox] = [level]
                else:
                    batch.append(level)
        for mailbox, batch in batches.items():
            mailbox.offer_all(batch)

    async def publish_notified(self, levels: Iterable[StockLevel]) -> None:
        """Publish what a NOTIFY says, when the database's own order explains it.

        Every change to a product bumps its version by one and notifies in commit order,
        so a notification follows the previous one by one version. Any other (the first
        one for a newly watched sku, a gap, or a payload any database role could send by
        hand with a huge version that would make subscribers ignore every real update) is
        replaced by the product's row, read from the database.
        """
        explained, unexplained = [], []
        for level in levels:
            if level.sku not in self._watchers:
                continue
            known = self._known.get(level.sku)
            if known is not None and level.version <= known + 1:
                self._known[level.sku] = max(known, level.version)
                explained.append(level)
            else:
                unexplained.append(level.sku)
        self.publish(explained)
        if unexplained:
            self.checked += len(unexplained)
            try:
                await self._publish_from_database(unexplained)
            except Exception:  # the listener's reconnect and resync cover an outage
                log.warning("could not check %d notified skus", len(unexplained), exc_info=True)

    async def _publish_from_database(self, skus: Sequence[str]) -> None:
        for start in range(0, len(skus), 1000):
            chunk = skus[start : start + 1000]
            products = await self._read_products(chunk, len(chunk))
            for product in products:
                if product.sku in self._watchers:
                    self._known[product.sku] = product.version
            self.publish(p.stock_level for p in products)

    async def resync(self) -> None:
        """Push the current state of every watched sku (versions decide what is news)."""
        self.resyncs += 1
        await self._publish_from_database(list(self._watchers))

    async def run(self) -> None:
        async with self._broadcast.subscribe(CHANNEL) as subscriber:
            while True:
                event = await subscriber.get()
                for flag in self._commit_flags:
                    flag.set()
                if event.message == RESYNC:
                    await self._resync_until_done()
                    continue
                try:
                    levels = parse_payload(event.message)
                except (ValueError, TypeError):  # a hand-made NOTIFY must not stop fan-out
                    log.exception("ignoring malformed availability payload %r", event.message[:200])
                    continue
                await self.publish_notified(levels)

    async def _resync_until_done(self) -> None:
        for attempt in range(RESYNC_ATTEMPTS):
            try:
                await self.resync()
                return
            except Exception:  # the database may still be coming back
                log.warning("resync failed (attempt %d); retrying", attempt + 1, exc_info=True)
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        # Subscribers keep their last numbers until the next change of each sku reaches
        # them (or they reconnect): say so where operators look.
        log.error(
            "resync gave up after %d attempts: %d watched skus may show stale availability "
            "until they next change",
            RESYNC_ATTEMPTS,
            self.watched_skus,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AvailabilityHub]:
        async with background(self.run(), "availability-hub"):
            yield self
