"""A small graphql-transport-ws client over aiohttp, for tests and the benchmarks.

Needs aiohttp (the `test` and `bench` extras install it)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

AVAILABILITY = """
subscription Availability($skus: [String!]!) {
  availability(skus: $skus) { sku quantity reserved available version updatedAt }
}
"""


class SubscriptionError(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e.get("message", "?") for e in errors))
        self.errors = errors


class GraphQLWebSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        payload: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> GraphQLWebSocket:
        ws = await session.ws_connect(
            f"{url.replace('http', 'ws', 1)}/graphql",
            protocols=["graphql-transport-ws"],
            headers=headers,
        )
        await ws.send_json({"type": "connection_init", "payload": payload or {}})
        ack = await ws.receive_json(timeout=10)
        assert ack["type"] == "connection_ack", ack
        return cls(ws)

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if data["type"] == "ping":
                await self.ws.send_json({"type": "pong"})
            elif "id" in data and data["id"] in self._queues:
                self._queues[data["id"]].put_nowait(data)
        for queue in self._queues.values():
            queue.put_nowait({"type": "closed"})

    async def subscribe(self, query: str, **variables: Any) -> Subscription:
        sub_id = str(next(self._ids))
        self._queues[sub_id] = asyncio.Queue()
        await self.ws.send_json(
            {"id": sub_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}
        )
        return Subscription(self, sub_id, self._queues[sub_id])

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a crashed client would."""
        connection = self.ws._response.connection  # aiohttp has no public abort
        transport = connection.transport if connection is not None else None
        if transport is not None:
            transport.abort()
        self._reader.cancel()


class Subscription:
    def __init__(
        self, socket: GraphQLWebSocket, sub_id: str, queue: asyncio.Queue[dict[str, Any]]
    ) -> None:
        self.socket = socket
        self.id = sub_id
        self._queue = queue

    @property
    def waiting(self) -> int:
        """Messages received for this subscription and not read yet."""
        return self._queue.qsize()

    async def message(self, timeout: float = 10) -> dict[str, Any]:
        """The next protocol message for this subscription, as the server sent it."""
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next result's data; raises SubscriptionError on an error message."""
        message = await self.message(timeout)
        if message["type"] == "next":
            payload = message["payload"]
            if payload.get("errors"):
                raise SubscriptionError(payload["errors"])
            data: dict[str, Any] = payload["data"]
            return data
        if message["type"] == "error":
            raise SubscriptionError(message["payload"])
        raise ConnectionError(f"subscription ended: {message}")

    async def updates(self, timeout: float = 10) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield (await self.next(timeout))["availability"]

    async def complete(self) -> None:
        await self.socket.ws.send_json({"id": self.id, "type": "complete"})
