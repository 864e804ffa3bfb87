"""A webhook endpoint subscribed to every stock event, for the benchmarks: the receiver
process (bench.harness.webhook_receiver), the endpoint created through the API as an
admin would, and whether delivery caught up with the feed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.harness import ROOT
from bench.harness.webhook_receiver import cursor_key
from inventory_graphql.testing.server import free_port

CREATE = """
mutation ($url: String!) {
  createWebhook(url: $url) {
    __typename
    ... on CreatedWebhook { secret webhook { id } }
    ... on Problem { message }
  }
}
"""

# Whether the endpoint has had the feed's last final event.
CAUGHT_UP = """
SELECT (w.feed_key, w.event_id) >= coalesce(
           (SELECT (e.feed_key, e.id) FROM stock_event e
            WHERE e.feed_key < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY e.feed_key DESC, e.id DESC LIMIT 1), (w.feed_key, w.event_id))
FROM webhook_endpoint w WHERE w.id = $1
"""

# The feed's events after the endpoint's start, up to and including a cursor.
EVENTS_UP_TO = """
SELECT count(*) FROM stock_event e
WHERE (e.feed_key, e.id) > ($1::xid8, $2::bigint) AND (e.feed_key, e.id) <= ($3::xid8, $4::bigint)
"""


@dataclass(frozen=True)
class Endpoint:
    id: int
    receiver_url: str
    start: tuple[int, int]  # the feed cursor it started after


def _http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Any:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        data = response.read()
    return json.loads(data) if data else None


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    """The receiver process, running until the block ends; its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.harness.webhook_receiver", str(port)], cwd=ROOT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _http("GET", f"{url}/stats")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the webhook receiver did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def subscribe(
    conn: asyncpg.Connection, server_url: str, admin_token: str, receiver_url: str
) -> Endpoint:
    """An endpoint for every event kind, created with createWebhook; the receiver is told
    its secret."""
    answer = await asyncio.to_thread(
        _http,
        "POST",
        f"{server_url}/graphql",
        json.dumps({"query": CREATE, "variables": {"url": f"{receiver_url}/"}}).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {admin_token}"},
    )
    created = answer["data"]["createWebhook"]
    if "secret" not in created:
        raise RuntimeError(f"createWebhook: {answer}")
    await asyncio.to_thread(_http, "PUT", f"{receiver_url}/secret", created["secret"].encode())
    endpoint_id = int(created["webhook"]["id"])
    row = await conn.fetchrow(
        "SELECT feed_key, event_id FROM webhook_endpoint WHERE id = $1", endpoint_id
    )
    assert row is not None, f"endpoint {endpoint_id} is not in webhook_endpoint"
    return Endpoint(endpoint_id, receiver_url, (row["feed_key"], row["event_id"]))


async def caught_up(conn: asyncpg.Connection, endpoint: Endpoint, timeout: float) -> dict[str, Any]:
    """Wait (at most `timeout`) until the endpoint has delivered the feed's last final
    event; the receiver's counts beside the feed's events from the endpoint's start up to
    the last one the receiver got. (Counted up to that cursor, not to the feed's end: the
    feed may still be moving, holds from a run's last ten minutes expiring, and delivery
    goes on between the two reads.)"""
    deadline = time.monotonic() + timeout
    while True:
        done = await conn.fetchval(CAUGHT_UP, endpoint.id)
        assert done is not None, f"endpoint {endpoint.id} was deleted"
        if done or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    stats = await asyncio.to_thread(_http, "GET", f"{endpoint.receiver_url}/stats")
    last = stats["last_cursor"]
    up_to = cursor_key(last) if last is not None else endpoint.start
    feed_events = await conn.fetchval(EVENTS_UP_TO, *endpoint.start, *up_to)
    return {**stats, "caught_up": bool(done), "feed_events": feed_events}


# Events after the endpoint's cursor: how far delivery lags (it yields the CPU in a rush).
BACKLOG = """
SELECT count(*) FROM stock_event e, webhook_endpoint w
WHERE w.id = $1 AND (e.feed_key, e.id) > (w.feed_key, w.event_id)
"""


async def backlog(conn: asyncpg.Connection, endpoint: Endpoint) -> int:
    """Events the endpoint has not had yet."""
    return int(await conn.fetchval(BACKLOG, endpoint.id))


def server_env(receiver_url: str) -> dict[str, str]:
    """The after servers' settings: the receiver's host allowed (it is on loopback)."""
    return {"INVENTORY_WEBHOOK_ALLOWED_HOSTS": receiver_url.removeprefix("http://")}


def complete(delivered: dict[str, Any]) -> bool:
    """Every event delivered, once each (repeats only as retries of one message), in feed
    order, every signature valid."""
    return bool(
        delivered["caught_up"]
        and delivered["events"] == delivered["feed_events"]
        and delivered["out_of_order"] == 0
        and delivered["bad_signatures"] == 0
    )
