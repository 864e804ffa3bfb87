"""HTTP limits at the server (http_protocol.py), with raw sockets against `serve`.

Each client that is not a trusted proxy is a loopback address of its own (127.0.0.2,
127.0.0.3, ...): Linux routes all of 127/8 to the loopback, and 127.0.0.1 is uvicorn's
default FORWARDED_ALLOW_IPS, exempt from the per-address cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.client import HTTPConnection

import aiohttp
import psutil
import pytest

from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.graphql_http import SERVER_ENV

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
# A loaded 2-core machine: how late a timeout may be acted on and seen by the client.
SLACK = 2.0
MB = 1024 * 1024
ATTACKER = "127.0.0.2"
SHOPPER = "127.0.0.3"


@pytest.fixture(scope="module")
def limited(database_url, tmp_path_factory) -> Iterator[ServerProcess]:
    """Default limits, but short read timeouts so the tests are quick."""
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "INVENTORY_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    }
    with ServerProcess(env, log=tmp_path_factory.mktemp("limited") / "log") as server:
        yield server


@pytest.fixture(scope="module")
def capped(database_url, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server with small connection caps."""
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_MAX_CONNECTIONS": "16",
        "INVENTORY_MAX_CONNECTIONS_PER_CLIENT": "4",
    }
    with ServerProcess(env, log=tmp_path_factory.mktemp("capped") / "log") as server:
        yield server


@contextlib.asynccontextmanager
async def connection(
    server: ServerProcess, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, local_addr=(source, 0), limit=4 * MB
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as
    closed); fails if it is still open after `timeout`."""
    received = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer on a kept-alive connection: status, header fields, body."""
    async with asyncio.timeout(SLACK):
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        fields = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        body = await reader.readexactly(int(fields.get("content-length", "0")))
    return status(raw), fields, body


def head(path: str = "/livez", *fields: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def rss(server: ServerProcess) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


class PeakRss:
    """The server's largest RSS while the block runs, sampled every 20 ms."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = rss(server)
        self.done = threading.Event()

    def __enter__(self) -> PeakRss:
        def sample() -> None:
            while not self.done.wait(0.02):
                self.peak = max(self.peak, rss(self.server))

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


# Header size and count


async def test_a_1_mb_header_is_refused_with_431_and_the_connection_closed(limited):
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * MB + b"\r\n\r\n")
        answer = await until_closed(reader, SLACK)
    assert status(answer) == 431
    assert b"over 16384 bytes" in answer
    assert b"connection: close" in answer


async def test_streamed_headers_are_refused_without_growing_the_server(limited):
    # Before: 8 connections streaming headers took the server from 51 to 499 MB.
    async def stream() -> int:
        async with connection(limited, ATTACKER) as (reader, writer):
            answer = asyncio.create_task(until_closed(reader, 10))
            writer.write(b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Stream: ")
            with contextlib.suppress(ConnectionError):
                for _ in range(32):  # up to 32 MB each, until the server closes
                    writer.write(b"a" * MB)
                    await writer.drain()
            return status(await answer)

    before = rss(limited)
    with PeakRss(limited) as memory:
        statuses = await asyncio.gather(*(stream() for _ in range(8)))
    assert statuses == [431] * 8
    assert memory.peak - before < 20 * MB, (before, memory.peak)


async def test_too_many_header_fields_are_refused_with_431(limited):
    fields = [f"X-Field-{i}: {i}" for i in range(101)]
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(head("/livez", *fields))
        answer = await until_closed(reader, SLACK)
    assert status(answer) == 431
    assert b"more than 100 header fields" in answer


async def test_heads_within_the_limits_are_answered(limited):
    fields = [f"X-Field-{i}: {i}" for i in range(99)]  # with Host: 100
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(head("/livez", *fields))
        assert (await read_answer(reader))[0] == 200
        writer.write(head("/livez", "X-Big: " + "a" * 16_000))
        assert (await read_answer(reader))[0] == 200


async def test_pipelined_requests_are_answered_in_order(limited):
    # Several requests in one read: the later heads begin in the middle of it.
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(head("/livez") + head("/nowhere") + head("/livez"))
        statuses = [(await read_answer(reader))[0] for _ in range(3)]
    assert statuses == [200, 404, 200]


async def test_a_head_pipelined_mid_read_is_measured_too(limited):
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(head("/livez") + head("/livez", "X-Big: " + "a" * 20_000))
        assert (await read_answer(reader))[0] == 200
        answer = await until_closed(reader, SLACK)
    assert status(answer) == 431


async def test_a_large_body_arriving_with_its_head_is_read_whole(limited):
    # Head and a 40 KB body in one write: the read is parsed past the head's budget.
    body = ('{"query": "{ __typename }", "variables": {"pad": "' + "x" * 40_000 + '"}}').encode()
    request = (
        "POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(request + body)
        code, _, answer = await read_answer(reader)
    assert code == 200, answer
    assert answer == b'{"data":{"__typename":"Query"}}'


# Read timeouts


async def test_a_half_sent_head_gets_408_and_is_closed_within_the_header_timeout(limited):
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(b"GET /livez HTTP/1.1\r\nHost: te")
        started = time.monotonic()
        answer = await until_closed(reader, HEADER_TIMEOUT + SLACK)
    assert status(answer) == 408
    assert time.monotonic() - started >= HEADER_TIMEOUT - 0.1


async def test_a_connection_that_sends_nothing_is_closed_quietly(limited):
    # As nginx: a browser's preconnected socket could take a 408 for a later answer.
    async with connection(limited, ATTACKER) as (reader, _):
        assert await until_closed(reader, HEADER_TIMEOUT + SLACK) == b""


async def test_the_header_timeout_restarts_for_each_request_on_a_kept_alive_connection(limited):
    async with connection(limited, ATTACKER) as (reader, writer):
        for _ in range(3):
            await asyncio.sleep(HEADER_TIMEOUT * 0.7)  # idle, within uvicorn's keep-alive
            writer.write(head("/livez"))
            assert (await read_answer(reader))[0] == 200


async def test_a_stalled_body_gets_408_and_is_closed(limited):
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"query":'
        )
        answer = await until_closed(reader, BODY_TIMEOUT + SLACK)
    assert status(answer) == 408
    assert b"body not received within 1 s" in answer
    # Its app was told the client left, and that is no error: no traceback in the log.
    await asyncio.sleep(0.5)
    assert limited.log is not None
    assert "Exception in ASGI application" not in limited.log.read_text()


async def test_a_dripping_body_gets_408_the_timeout_is_for_the_whole_body(limited):
    async with connection(limited, ATTACKER) as (reader, writer):
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        answer = asyncio.create_task(until_closed(reader, BODY_TIMEOUT + SLACK))
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                if answer.done():
                    break
                writer.write(b" ")  # one byte every 0.2 s: each gap well under the timeout
                await asyncio.sleep(0.2)
        assert status(await answer) == 408


# Half-open requests from one address


async def test_1500_half_open_requests_are_refused_or_timed_out_while_others_are_served(
    limited, make_product
):
    sku = await make_product(1000)
    outcomes: list[tuple[int, float]] = []

    async def half_open() -> None:
        async with connection(limited, ATTACKER) as (reader, writer):
            opened = time.monotonic()
            writer.write(b"POST /graphql HTTP/1.1\r\nHost: test\r\nContent-Le")
            answer = await until_closed(reader, HEADER_TIMEOUT + 2 * SLACK)
            outcomes.append((status(answer), time.monotonic() - opened))

    before = rss(limited)
    with PeakRss(limited) as memory, Shopper(limited, sku) as shopper:
        await asyncio.gather(*(half_open() for _ in range(1500)))
    statuses = [code for code, _ in outcomes]
    assert set(statuses) <= {408, 503}
    # The per-address cap (256) held most of them off at accept; the rest were closed by
    # the header timeout.
    assert statuses.count(503) >= 1000, statuses.count(503)
    assert max(seconds for _, seconds in outcomes) < HEADER_TIMEOUT + SLACK
    assert shopper.failures == []
    assert shopper.served >= 3
    assert memory.peak - before < 40 * MB, (before, memory.peak)


class Shopper:
    """Another address checking /livez and reserving one unit, in a loop on a thread of
    its own while the block runs (the attack's 1,500 sockets keep the test's loop busy)."""

    def __init__(self, server: ServerProcess, sku: str) -> None:
        self.server = server
        self.body = json.dumps(
            {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}
        )
        self.served = 0
        self.failures: list[object] = []
        self.done = threading.Event()

    def shop(self) -> None:
        json_type = {"Content-Type": "application/json"}
        while not self.done.is_set():
            conn = HTTPConnection("127.0.0.1", self.server.port, 10, (SHOPPER, 0))
            try:
                conn.request("GET", "/livez")
                live = conn.getresponse()
                live.read()
                conn.request("POST", "/graphql", self.body, json_type)
                answer = json.loads(conn.getresponse().read())
                if live.status != 200 or "Reservation" not in str(answer):
                    self.failures.append((live.status, answer))
                self.served += 1
            except Exception as error:  # recorded, so the test sees it
                self.failures.append(error)
            finally:
                conn.close()
            time.sleep(0.05)

    def __enter__(self) -> Shopper:
        self.thread = threading.Thread(target=self.shop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


# Connection caps


async def test_past_the_total_cap_a_connection_is_refused_with_503_at_accept(capped):
    async with contextlib.AsyncExitStack() as held:
        for _ in range(16):  # 127.0.0.1: a trusted proxy, so only the total cap applies
            reader, writer = await held.enter_async_context(connection(capped))
            writer.write(head("/livez"))
            assert (await read_answer(reader))[0] == 200
        async with connection(capped, SHOPPER) as (reader, _):
            answer = await until_closed(reader, SLACK)  # refused before any request
        assert status(answer) == 503
        assert b"retry-after: 5" in answer
        assert b"too many connections open" in answer
    assert await eventually_answered(capped, SHOPPER)


async def test_one_address_is_capped_and_websockets_count_until_they_close(capped):
    upgrade = head(
        "/graphql",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: graphql-transport-ws",
    )
    async with contextlib.AsyncExitStack() as held:
        sockets = []
        for _ in range(4):
            reader, writer = await held.enter_async_context(connection(capped, ATTACKER))
            writer.write(upgrade)
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            sockets.append(writer)
        async with connection(capped, ATTACKER) as (reader, _):
            answer = await until_closed(reader, SLACK)
        assert status(answer) == 503
        assert b"too many connections from your address" in answer
        # Another address, and the trusted proxy address, are not held back.
        assert await eventually_answered(capped, SHOPPER)
        assert await eventually_answered(capped, "127.0.0.1")
        sockets[0].close()  # a WebSocket ends: its address may connect again
        assert await eventually_answered(capped, ATTACKER)


async def test_a_trusted_proxy_is_not_capped_per_address(capped):
    async with contextlib.AsyncExitStack() as held:
        for _ in range(8):  # twice the per-address cap, from FORWARDED_ALLOW_IPS's 127.0.0.1
            reader, writer = await held.enter_async_context(connection(capped))
            writer.write(head("/livez"))
            assert (await read_answer(reader))[0] == 200


async def eventually_answered(server: ServerProcess, source: str) -> bool:
    """A fresh connection from `source` gets /livez 200 within a few seconds (the server
    notices closed connections on its next turn)."""
    deadline = time.monotonic() + SLACK
    while time.monotonic() < deadline:
        async with connection(server, source) as (reader, writer):
            writer.write(head("/livez"))
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                if (await read_answer(reader))[0] == 200:
                    return True
        await asyncio.sleep(0.1)
    return False


async def test_the_limits_apply_with_several_workers_too(database_url, tmp_path):
    # Each worker process gets the protocol (pickled with uvicorn's config) and counts its
    # own connections.
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_HEADER_TIMEOUT_SECONDS": "1"}
    with ServerProcess(env, ["--workers", "2"], log=tmp_path / "log") as server:
        async with connection(server, ATTACKER) as (reader, writer):
            writer.write(head("/livez"))
            assert (await read_answer(reader))[0] == 200
            writer.write(head("/livez", "X-Big: " + "a" * MB))
            assert status(await until_closed(reader, SLACK)) == 431
        async with connection(server, ATTACKER) as (reader, writer):
            writer.write(b"GET /livez HTTP/1.1\r\n")
            assert status(await until_closed(reader, 1 + SLACK)) == 408


# Big WebSocket messages


async def test_200_kb_websocket_messages_are_closed_1009_while_others_are_served(
    limited, make_product
):
    """Each socket sending one 200 KB message (uvicorn allowed 16 MiB; one 15 MB message
    froze the event loop for seconds) is closed with 1009 before it is parsed, while
    /livez and a reserve from another address keep answering and the server stays small."""
    sku = await make_product(1000)
    big = json.dumps({"type": "connection_init", "payload": {"x": "y" * 200_000}})

    async def send_big(session: aiohttp.ClientSession) -> int | None:
        ws = await session.ws_connect(
            f"ws://127.0.0.1:{limited.port}/graphql", protocols=["graphql-transport-ws"]
        )
        await ws.send_str(big)
        async with asyncio.timeout(SLACK):
            await ws.receive()  # the close frame
        return ws.close_code

    before = rss(limited)
    connector = aiohttp.TCPConnector(limit=0, local_addr=(ATTACKER, 0))
    with PeakRss(limited) as memory, Shopper(limited, sku) as shopper:
        async with aiohttp.ClientSession(connector=connector) as session:
            codes = await asyncio.gather(*(send_big(session) for _ in range(100)))
    assert set(codes) == {1009}
    assert shopper.failures == []
    assert shopper.served >= 1
    assert memory.peak - before < 40 * MB, (before, memory.peak)
