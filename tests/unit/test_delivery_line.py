"""Direct delivery's line: updates a mailbox forwards are written from the offering task,
in order, latest per sku, one delivery per pause; what must wait goes on in a task; what
cannot be rendered goes back to the mailbox. And the text frames it writes."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from inventory_graphql.api.delivery import Delivery, DirectLine, run_eagerly
from inventory_graphql.http_protocol import TextFrames, text_frame_header
from inventory_graphql.inventory.models import StockLevel
from inventory_graphql.live.mailbox import Mailbox

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def level(sku: str, version: int) -> StockLevel:
    return StockLevel(sku, 100, version, version, EPOCH + timedelta(seconds=version))


class FakeDelivery:
    """Delivery's interface to the line: renders `sku:version`, records what is written."""

    def __init__(self) -> None:
        self.rendered_once: set[StockLevel] = set()
        self.written: list[bytes] = []
        self.writable = True  # the socket takes a frame at once
        self.gate: asyncio.Event | None = None  # set: `send` waits for it
        self.refuse: set[str] = set()  # skus whose rendering gives errors
        self.fail: Exception | None = None

    def rendered(self, change: StockLevel) -> bytes | None:
        return self._text(change) if change in self.rendered_once else None

    def write_now(self, payload: bytes) -> bool:
        if self.writable:
            self.written.append(payload)
        return self.writable

    async def render(self, change: StockLevel, to_payload: object) -> bytes | None:
        if change.sku in self.refuse:
            return None
        self.rendered_once.add(change)
        return self._text(change)

    async def send(self, payload: bytes) -> bool:
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await self.gate.wait()
        self.written.append(payload)
        return True

    @staticmethod
    def _text(change: StockLevel) -> bytes:
        return f"{change.sku}:{change.version}".encode()


def line_for(mailbox: Mailbox, delivery: FakeDelivery, pause: float = 0.0) -> DirectLine:
    line = DirectLine(cast(Delivery, delivery), mailbox, lambda level: level, pause)
    mailbox.forward(line)
    return line


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_an_update_is_written_in_the_offering_call() -> None:
    mailbox, delivery = Mailbox(frozenset({"A"})), FakeDelivery()
    line_for(mailbox, delivery)
    mailbox.offer(level("A", 1))  # the first subscriber renders it
    delivery.rendered_once.add(level("A", 2))
    mailbox.offer(level("A", 2))  # already rendered: written without a coroutine
    assert delivery.written == [b"A:1", b"A:2"]
    assert mailbox.pending == 0


async def test_forwarding_starts_with_what_is_pending_and_keeps_versions_in_order() -> None:
    mailbox, delivery = Mailbox(frozenset({"A", "B"})), FakeDelivery()
    mailbox.offer(level("A", 3))
    line_for(mailbox, delivery)
    assert delivery.written == [b"A:3"]
    mailbox.offer(level("A", 2))  # older: never forwarded
    mailbox.offer_all([level("B", 5), level("B", 4), level("A", 4)])
    assert delivery.written == [b"A:3", b"B:5", b"A:4"]


async def test_within_the_pause_updates_coalesce_and_go_out_together() -> None:
    mailbox, delivery = Mailbox(frozenset({"A", "B"})), FakeDelivery()
    line_for(mailbox, delivery, pause=0.05)
    mailbox.offer_all([level("A", 1), level("B", 1)])  # the snapshot just went out: waits
    mailbox.offer(level("A", 2))
    assert delivery.written == []
    await asyncio.sleep(0.12)  # a pause, and at most one more to the next beat
    assert delivery.written == [b"A:2", b"B:1"]  # latest per sku, first-offered sku first
    await asyncio.sleep(0.1)
    mailbox.offer_all([level("A", 3), level("B", 2)])  # after a quiet spell: at once, both
    assert delivery.written == [b"A:2", b"B:1", b"A:3", b"B:2"]
    mailbox.offer(level("A", 4))  # within the pause again
    assert delivery.written[-1] == b"B:2"
    await asyncio.sleep(0.12)
    assert delivery.written[-1] == b"A:4"


async def test_paused_lines_deliver_on_the_same_beat() -> None:
    # Subscribers whose pauses end at different moments deliver together, so that they
    # find the same latest update (rendered once for all of them).
    loop = asyncio.get_running_loop()
    pause = 0.05
    await asyncio.sleep(pause - loop.time() % pause)  # near the start of a beat
    lines: list[tuple[Mailbox, FakeDelivery, float]] = []
    for _ in range(2):
        mailbox, delivery = Mailbox(frozenset({"A"})), FakeDelivery()
        line_for(mailbox, delivery, pause=pause)
        lines.append((mailbox, delivery, loop.time()))
        await asyncio.sleep(0.015)
    written_at: list[float] = []

    def record(payload: bytes) -> bool:
        written_at.append(loop.time())
        return True

    update = level("A", 1)
    for mailbox, delivery, _ in lines:
        delivery.rendered_once.add(update)
        delivery.write_now = record  # type: ignore[method-assign]
        mailbox.offer(update)
    assert written_at == []
    await asyncio.sleep(0.15)
    assert len(written_at) == 2
    assert abs(written_at[0] - written_at[1]) < 0.005
    assert all(at >= started + pause for (_, _, started), at in zip(lines, written_at, strict=True))


async def test_a_paused_line_waits_for_a_timer_without_a_task() -> None:
    # A watched hot product keeps every line paused: a task per delivery per subscriber
    # would cost more than the write.
    mailbox, delivery = Mailbox(frozenset({"A"})), FakeDelivery()
    line_for(mailbox, delivery, pause=0.05)
    delivery.rendered_once.update({level("A", 1), level("A", 2), level("A", 3)})
    tasks = len(asyncio.all_tasks())
    mailbox.offer(level("A", 1))
    mailbox.offer(level("A", 2))
    assert delivery.written == []
    assert len(asyncio.all_tasks()) == tasks
    for _ in range(150):  # a pause, and at most one more to the next beat
        if delivery.written:
            break
        await asyncio.sleep(0.001)
    assert delivery.written == [b"A:2"]  # once, the latest
    mailbox.offer(level("A", 3))  # a new pause began with that delivery
    assert delivery.written == [b"A:2"]
    await asyncio.sleep(0.12)
    assert delivery.written == [b"A:2", b"A:3"]
    assert len(asyncio.all_tasks()) == tasks


async def test_a_socket_that_is_not_writable_gets_its_updates_in_order_later() -> None:
    mailbox, delivery = Mailbox(frozenset({"A", "B"})), FakeDelivery()
    line_for(mailbox, delivery)
    delivery.rendered_once.update({level("A", 1), level("A", 2), level("B", 1), level("B", 2)})
    delivery.writable = False
    delivery.gate = asyncio.Event()
    mailbox.offer(level("A", 1))
    mailbox.offer(level("B", 1))
    mailbox.offer(level("A", 2))  # replaces A:1 if A:1 has not gone yet
    delivery.writable = True  # the fast path must not overtake what waits
    mailbox.offer(level("B", 2))
    await settle()
    assert delivery.written == []
    assert mailbox.pending == 2  # what waits behind A:1 counts (the pending updates gauge)
    delivery.gate.set()
    await settle()
    assert delivery.written == [b"A:1", b"B:2", b"A:2"]
    assert mailbox.pending == 0


async def test_what_cannot_be_rendered_goes_back_to_the_mailbox() -> None:
    mailbox, delivery = Mailbox(frozenset({"A", "B"})), FakeDelivery()
    line_for(mailbox, delivery)
    delivery.refuse.add("B")
    mailbox.offer_all([level("A", 1), level("B", 1)])
    assert delivery.written == [b"A:1"]
    assert await asyncio.wait_for(mailbox.take(), 1) == [level("B", 1)]
    mailbox.offer(level("A", 2))  # the ordinary path from now on
    assert await asyncio.wait_for(mailbox.take(), 1) == [level("A", 2)]
    assert delivery.written == [b"A:1"]


async def test_a_failing_write_never_reaches_the_offering_task() -> None:
    mailbox, delivery = Mailbox(frozenset({"A"})), FakeDelivery()
    line_for(mailbox, delivery)
    delivery.fail = RuntimeError("socket broke")
    mailbox.offer(level("A", 1))  # does not raise
    assert await asyncio.wait_for(mailbox.take(), 1) == [level("A", 1)]


async def test_closing_the_line_stops_what_waits() -> None:
    mailbox, delivery = Mailbox(frozenset({"A"})), FakeDelivery()
    line = line_for(mailbox, delivery, pause=0.05)
    mailbox.offer(level("A", 1))
    line.close()
    await asyncio.sleep(0.1)
    mailbox.offer(level("A", 2))
    await settle()
    assert delivery.written == []


async def test_run_eagerly_makes_a_task_only_for_what_waits() -> None:
    steps: list[str] = []

    async def quick() -> None:
        steps.append("quick")

    async def slow(gate: asyncio.Event) -> None:
        try:
            steps.append("slow started")
            await gate.wait()
            steps.append("slow done")
        finally:
            steps.append("slow finally")

    assert run_eagerly(quick()) is None
    assert steps == ["quick"]
    gate = asyncio.Event()
    task = run_eagerly(slow(gate))
    assert task is not None and steps == ["quick", "slow started"]
    gate.set()
    await asyncio.wait_for(task, 1)
    assert steps[-2:] == ["slow done", "slow finally"]

    task = run_eagerly(slow(asyncio.Event()))
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps[-1] == "slow finally"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_a_text_frame_is_what_websockets_would_send(size: int) -> None:
    text = b"x" * size
    frame = Frame(Opcode.TEXT, text).serialize(mask=False, extensions=[])
    assert text_frame_header(len(text)) + text == frame


class Transport:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


async def test_text_frames_are_written_only_when_uvicorn_would_write_at_once() -> None:
    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
        pass

    # Every name TextFrames uses (http_protocol.py's header) on uvicorn's protocol.
    protocol = WebSocketsSansIOProtocol(
        config=Config(app=app, log_config=None),
        server_state=ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
    )
    assert "extensions" in inspect.getsource(WebSocketsSansIOProtocol.handle_connect)
    transport = Transport()
    protocol.transport = cast(Any, transport)
    protocol.scope = cast(Any, {"extensions": {}})
    protocol.conn.state = State.OPEN
    protocol.handshake_complete = True
    TextFrames.offer(protocol)
    frames = protocol.scope["extensions"]["inventory.text_frames"]
    assert isinstance(frames, TextFrames)
    assert frames.write(b'{"a":1}')
    assert transport.data == [b'\x81\x07{"a":1}']
    protocol.writable.clear()  # the transport's buffer is full: uvicorn's send would wait
    assert not frames.write(b"{}")
    protocol.writable.set()
    protocol.close_sent = True
    assert not frames.write(b"{}")
    protocol.close_sent = False
    protocol.conn.state = State.CLOSING
    assert not frames.write(b"{}")
    assert len(transport.data) == 1

    deflating = cast(Any, WebSocketsSansIOProtocol.__new__(WebSocketsSansIOProtocol))
    deflating.scope = {"extensions": {}}
    deflating.conn = protocol.conn
    deflating.conn.extensions = [object()]  # a negotiated permessage-deflate
    TextFrames.offer(deflating)
    assert deflating.scope["extensions"] == {}
