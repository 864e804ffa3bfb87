"""Live hold status: PostgreSQL NOTIFY -> listener -> this hub -> `reservation` subscribers.

Migration 005 notifies `CHANNEL` with the ids of the holds a statement changed. The hub
re-reads each watched hold from the database and hands the state it read to the hold's
mailboxes: subscribers see what the database holds, never a payload anyone could forge.

All reads go through one task, one read per hold at a time, so the states a mailbox gets
for a hold are in the database's order. Notifications arriving while a read is under way
coalesce: the hold is read once more afterwards, and that read sees all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from broadcaster import Broadcast

from inventory_graphql.background import background
from inventory_graphql.inventory.models import Reservation, ReservationStatus
from inventory_graphql.live.listener import RESYNC
from inventory_graphql.metrics import Reading

log = logging.getLogger(__name__)

CHANNEL = "inventory_reservation"
TRIGGERS = ("reservation_notify", "reservation_line_notify")

ReadReservation = Callable[[str], Awaitable[Reservation | None]]

# Holds read at once, each on a pool connection: at most 2 of the pool's (8 by default),
# so a sweep expiring many watched holds never starves reserves (~0.3 ms a read).
READS_AT_ONCE = 2
RETRY_SECONDS = 0.2  # after a failed read (the database may be coming back)


def parse_payload(payload: str) -> list[str]:
    """The trigger's payload: a JSON array of hold ids. Raises ValueError or TypeError for
    anything else (a hand-made NOTIFY)."""
    ids = json.loads(payload)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise TypeError("not a list of reservation ids")
    return ids


def is_final(reservation: Reservation) -> bool:
    return reservation.status is not ReservationStatus.PENDING


class HoldMailbox:
    """One subscriber's next state of its hold: the latest read, nothing more (a slow
    reader skips states in between, never sees them out of order)."""

    def __init__(self, reservation_id: str) -> None:
        self.reservation_id = reservation_id
        self._latest: Reservation | None = None
        self._gone = False
        self._ready = asyncio.Event()

    def offer(self, reservation: Reservation | None) -> None:
        if reservation is None:
            self._gone = True
        else:
            self._latest = reservation
        self._ready.set()

    async def take(self) -> Reservation | None:
        """Wait for a state; None when the hold is no longer in the database."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            if self._gone:
                return None
            latest, self._latest = self._latest, None
            if latest is not None:
                return latest


class ReservationHub:
    def __init__(self, broadcast: Broadcast, read: ReadReservation) -> None:
        self._broadcast = broadcast
        self._read = read
        self._watchers: dict[str, set[HoldMailbox]] = defaultdict(set)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self.reads = 0

    @property
    def subscriptions(self) -> int:
        return sum(len(mailboxes) for mailboxes in self._watchers.values())

    @property
    def watched(self) -> int:
        return len(self._watchers)

    def readings(self) -> dict[str, Reading]:
        """What /metrics shows of this hub."""
        return {
            "inventory_hold_subscriptions": (
                "gauge",
                "reservation (hold status) subscriptions open",
                lambda: self.subscriptions,
            ),
            "inventory_watched_holds": (
                "gauge",
                "holds with at least one subscriber",
                lambda: self.watched,
            ),
            "inventory_hold_reads": (
                "counter",
                "watched holds read from the database (once per hold per notification burst, "
                "however many subscribers)",
                lambda: self.reads,
            ),
        }

    @contextlib.contextmanager
    def watch(self, reservation_id: str) -> Iterator[HoldMailbox]:
        """A mailbox that gets the hold's current state, then each change, until the block
        exits. `reservation_id` is as the database spells it (canonical uuid text)."""
        mailbox = HoldMailbox(reservation_id)
        self._watchers[reservation_id].add(mailbox)
        self._mark([reservation_id])  # the first state comes through the same reads
        try:
            yield mailbox
        finally:
            watchers = self._watchers.get(reservation_id)
            if watchers is not None:
                watchers.discard(mailbox)
                if not watchers:
                    del self._watchers[reservation_id]

    def _mark(self, ids: list[str]) -> None:
        self._dirty.update(i for i in ids if i in self._watchers)
        if self._dirty:
            self._wake.set()

    async def _listen(self) -> None:
        async with self._broadcast.subscribe(CHANNEL) as subscriber:
            while True:
                event = await subscriber.get()
                if event.message == RESYNC:  # notifications may have been lost: re-read all
                    self._mark(list(self._watchers))
                    continue
                try:
                    ids = parse_payload(event.message)
                except (ValueError, TypeError):  # a hand-made NOTIFY must not stop fan-out
                    log.exception("ignoring malformed reservation payload %r", event.message[:200])
                    continue
                self._mark(ids)

    async def _refresh(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = list(self._dirty), set()
            for start in range(0, len(dirty), READS_AT_ONCE):
                chunk = [i for i in dirty[start : start + READS_AT_ONCE] if i in self._watchers]
                results = await asyncio.gather(
                    *(self._read(i) for i in chunk), return_exceptions=True
                )
                failed = []
                for reservation_id, result in zip(chunk, results, strict=True):
                    if isinstance(result, Exception):
                        failed.append(reservation_id)
                        continue
                    if isinstance(result, BaseException):
                        raise result
                    self.reads += 1
                    for mailbox in self._watchers.get(reservation_id, ()):
                        mailbox.offer(result)
                if failed:
                    log.warning("could not read %d watched holds; retrying", len(failed))
                    await asyncio.sleep(RETRY_SECONDS)
                    self._mark(failed)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReservationHub]:
        async with (
            background(self._listen(), "reservation-hub-listen"),
            background(self._refresh(), "reservation-hub-refresh"),
        ):
            yield self
