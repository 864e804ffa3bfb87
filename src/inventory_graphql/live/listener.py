"""The one LISTEN connection per process, as a broadcaster backend that reconnects.

broadcaster 0.3.1's postgres backend opens one connection and never reconnects: after a
dropped connection its subscribers silently stop hearing anything. This backend (plugged
in through `Broadcast(backend=...)`, broadcaster's extension point) notices the loss,
reconnects with backoff, LISTENs again, and then publishes a RESYNC event on every
channel: notifications sent while it was away are lost, so listeners must re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
from broadcaster import BroadcastBackend, Event

log = logging.getLogger(__name__)

RESYNC = "resync"
APPLICATION_NAME = "inventory-graphql-listener"


class ReconnectingPostgresBackend(BroadcastBackend):
    def __init__(
        self,
        url: str,
        *,
        health_check_seconds: float = 2.0,
        min_backoff: float = 0.1,
        max_backoff: float = 3.0,
    ) -> None:
        self._url = url
        self._health_check_seconds = health_check_seconds
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._channels: set[str] = set()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        # One operation at a time on the connection (asyncpg refuses a second): two hubs
        # LISTEN at startup while the health check may be pinging.
        self._busy = asyncio.Lock()
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        await self._open()
        self._supervisor = asyncio.create_task(self._supervise(), name="listener-supervisor")

    async def disconnect(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        async with self._busy:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.add_listener(channel, self._on_notify)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        async with self._busy:
            if self._conn is not None and not self._conn.is_closed():
                await self._conn.remove_listener(channel, self._on_notify)

    async def publish(self, channel: str, message: Any) -> None:
        # Publishing is the database's job (triggers call pg_notify inside the writing
        # transaction); publishing from here would be outside it.
        raise NotImplementedError("changes are published by the database's triggers")

    async def next_published(self) -> Event:
        return await self._events.get()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        # asyncpg hands a NOTIFY's payload over as text.
        self._events.put_nowait(Event(channel, str(payload)))

    async def _open(self) -> None:
        conn = await asyncpg.connect(
            self._url, server_settings={"application_name": APPLICATION_NAME}
        )
        self._lost = lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        async with self._busy:  # a channel subscribed meanwhile is in the set or sees conn
            for channel in list(self._channels):
                await conn.add_listener(channel, self._on_notify)
            self._conn = conn

    async def _supervise(self) -> None:
        while True:
            await self._until_lost()
            log.warning("listener connection lost; reconnecting")
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            backoff = self._min_backoff
            while True:
                try:
                    await self._open()
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
            self.reconnects += 1
            log.info("listener reconnected; resyncing subscribers")
            for channel in self._channels:
                self._events.put_nowait(Event(channel, RESYNC))

    async def _until_lost(self) -> None:
        """Return when the connection is gone: told by asyncpg, or found by a ping."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._health_check_seconds)
                return
            try:
                assert self._conn is not None
                async with self._busy:
                    await asyncio.wait_for(self._conn.execute("SELECT 1"), timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return
