"""Webhook delivery tests: a database of their own (so that no other server delivers to
their endpoints), the receiver process (receiver.py), and reading what was delivered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from inventory_graphql.testing.server import ServerProcess, free_port
from tests.support.graphql_http import SERVER_ENV
from tests.support.paths import ROOT

CREATE_WEBHOOK = """
mutation Create($url: String!, $kinds: [StockEventKind!]) {
  createWebhook(url: $url, kinds: $kinds) {
    __typename
    ... on CreatedWebhook { secret webhook { id cursor status kinds } }
    ... on DestinationNotAllowed { url reason }
    ... on InvalidInput { field }
    ... on WebhookLimitReached { limit }
    ... on Problem { message }
  }
}
"""

DELETE_WEBHOOK = """
mutation Delete($id: ID!) {
  deleteWebhook(id: $id) {
    __typename
    ... on Webhook { id url status }
    ... on WebhookNotFound { id }
    ... on Problem { message }
  }
}
"""

WEBHOOKS = """
query {
  webhooks {
    id url kinds status cursor lag deliveredEvents lastSuccessAt pendingWebhookId
    pendingEvents attempts firstFailureAt nextAttemptAt disabledReason createdBy
    recentFailures { at webhookId attempt statusCode error }
  }
}
"""

# What the feed holds after a cursor, of some kinds ($3 NULL: all), final events only.
FEED_AFTER = """
SELECT feed_key::text || '.' || id AS cursor FROM stock_event
WHERE (feed_key, id) > ($1::xid8, $2::bigint)
  AND feed_key < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::text[] IS NULL OR kind::text = ANY ($3))
ORDER BY feed_key, id
"""

# Whether an endpoint has delivered everything final in the feed.
CAUGHT_UP = """
SELECT w.first_key IS NULL AND NOT EXISTS (
    SELECT 1 FROM stock_event e
    WHERE (e.feed_key, e.id) > (w.feed_key, w.event_id)
      AND e.feed_key < pg_snapshot_xmin(pg_current_snapshot())
      AND (w.kinds IS NULL OR e.kind = ANY (w.kinds)))
FROM webhook_endpoint w WHERE w.id = $1
"""

# Test servers deliver quickly: look for endpoints twice a second, retry within 2 s.
WEBHOOK_ENV = {
    "INVENTORY_WEBHOOK_POLL_SECONDS": "0.5",
    "INVENTORY_WEBHOOK_RETRY_MAX_SECONDS": "2",
    "INVENTORY_WEBHOOK_CONNECT_TIMEOUT_SECONDS": "1",
    "INVENTORY_WEBHOOK_READ_TIMEOUT_SECONDS": "2",
    "INVENTORY_WEBHOOK_TIMEOUT_SECONDS": "3",
}


class Receiver:
    """receiver.py in a process of its own, on one port across restarts."""

    def __init__(self, record: Path) -> None:
        self.port = free_port()
        self.record = record
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.setup: dict[str, dict[str, str]] = {}

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.webhooks.receiver", str(self.port), str(self.record)],
            cwd=ROOT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), aiohttp_free_connect(self.port):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError("the receiver did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    async def control(self, path: str, **setup: str) -> None:
        self.setup.setdefault(path, {}).update(setup)
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.url}/control", json={"path": path, **setup}) as response,
        ):
            assert response.status == 200

    async def restore(self) -> None:
        """Tell a restarted receiver what it was told before."""
        for path, setup in self.setup.items():
            await self.control(path, **setup)

    def requests(self, path: str) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["path"] == path]


@contextlib.contextmanager
def aiohttp_free_connect(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    made = Receiver(tmp_path / "received.jsonl")
    made.start()
    yield made
    made.stop()


def server_env(database_url: str, receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        **WEBHOOK_ENV,
        "INVENTORY_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}",
        **extra,
    }


@dataclass(frozen=True)
class Delivered:
    """What one endpoint's receiver acknowledged, each message at its first arrival."""

    messages: list[str]  # webhook-ids in order of first acknowledgement
    events: list[str]  # their events' cursors, in that order
    requests: int  # every request, retries and duplicates included


def delivered(receiver: Receiver, path: str) -> Delivered:
    """Every request verified; a webhook-id sent twice carries the same events."""
    requests = receiver.requests(path)
    bodies: dict[str, str] = {}
    messages: list[str] = []
    events: list[str] = []
    for request in requests:
        assert request["verified"], f"bad signature on {request['id']}"
        body = json.loads(request["body"])
        assert body["type"] == "stock.events"
        cursors = [e["cursor"] for e in body["data"]["events"]]
        # Duplicates only with the same webhook-id: a resend is the same message.
        if request["id"] in bodies:
            assert json.loads(bodies[request["id"]])["data"] == body["data"], request["id"]
        else:
            bodies[request["id"]] = request["body"]
        if 200 <= request["status"] < 300 and request["id"] not in messages:
            messages.append(request["id"])
            events.extend(cursors)
    return Delivered(messages, events, len(requests))


async def feed_after(db: asyncpg.Connection, cursor: str, kinds: list[str] | None) -> list[str]:
    key, _, id_ = cursor.partition(".")
    return [r["cursor"] for r in await db.fetch(FEED_AFTER, int(key), int(id_), kinds)]


async def wait_caught_up(db: asyncpg.Connection, endpoint: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not await db.fetchval(CAUGHT_UP, int(endpoint)):
            await asyncio.sleep(0.1)


def start_servers(env: dict[str, str], count: int) -> list[ServerProcess]:
    servers = [ServerProcess(env) for _ in range(count)]
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers
