"""Availability updates sent straight to a subscriber's WebSocket, rendered once for all.

Strawberry runs every event of every subscription through its whole pipeline: graphql-core
builds and runs an executor for it, every extension sees it, the handler builds and
encodes a message. A change watched by 5,000 product pages meant 5,000 identical
executions. After its first result (which takes the ordinary path, so validation,
variables and errors are Strawberry's), a subscription over graphql-transport-ws hands its
updates to a Delivery instead: graphql-core still executes the subscriber's selection, but
once per (update, selection) in the process, and every subscriber who asked the same gets
the same JSON text. A DirectLine writes it from the hub's own task as the hub publishes the
update: no subscriber's task wakes up and no timer is set for a quiet subscriber. Where the
server offers it (http_protocol.TextFrames), the message goes to the transport as a frame
built from those bytes, not through Starlette, uvicorn and websockets per subscriber: a
delivery costs a lookup, a concatenation and the socket write.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import orjson
from graphql import FieldNode, FragmentSpreadNode, GraphQLResolveInfo, Node, VariableNode
from starlette.websockets import WebSocket, WebSocketDisconnect

from inventory_graphql.api.internals import (
    Executor,
    LiveOperation,
    current_operation,
    execute_event,
    subscription_executor,
)
from inventory_graphql.http_protocol import TEXT_FRAMES, TextFrames
from inventory_graphql.inventory.models import StockLevel
from inventory_graphql.live.mailbox import Mailbox

log = logging.getLogger(__name__)


class Renderings:
    """Rendered `payload` JSON by (selection, update); one per process, in the lifespan."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self._texts: dict[tuple[object, int], tuple[object, bytes]] = {}
        self._max_entries = max_entries

    def get(self, selection: object, update: object) -> bytes | None:
        # Keyed by the update's identity: the hub hands the same object to every mailbox.
        # The entry holds the object, so its id cannot be reused while the entry lives.
        found = self._texts.get((selection, id(update)))
        return found[1] if found is not None and found[0] is update else None

    def put(self, selection: object, update: object, text: bytes) -> None:
        if len(self._texts) >= self._max_entries:
            self._texts.clear()  # rarely: updates are short-lived, a cold start is cheap
        self._texts[(selection, id(update))] = (update, text)


class Delivery:
    """One subscription's direct line to its WebSocket."""

    def __init__(
        self,
        info: GraphQLResolveInfo[Any],
        operation: LiveOperation,
        socket: WebSocket,
        renderings: Renderings,
    ) -> None:
        self._info = info
        self._renderings = renderings
        self._operation = operation
        self._socket = socket
        self._executor: Executor | None = None
        self._prefix = b'{"id":' + orjson.dumps(operation.id) + b',"type":"next","payload":'
        frames = (socket.scope.get("extensions") or {}).get(TEXT_FRAMES)
        self._frames = frames if isinstance(frames, TextFrames) else None
        # What the rendering depends on: the document, and the values of the variables
        # the selection uses (not the root field's arguments, so pages watching different
        # skus with one document share their renderings).
        used = sorted(_variables_in(info.field_nodes, info))
        variables = operation.variables or {}
        self.selection = (
            operation.query,
            operation.operation_name,
            orjson.dumps([(name, variables.get(name)) for name in used]),
        )

    @classmethod
    def open(cls, info: GraphQLResolveInfo[Any], renderings: Renderings | None) -> Delivery | None:
        """A direct line, or None outside a graphql-transport-ws operation (or when direct
        delivery is off: then there are no renderings, and no operation is recorded)."""
        operation = current_operation()
        socket = getattr(info.context, "request", None)
        if operation is None or renderings is None or not isinstance(socket, WebSocket):
            return None
        return cls(info, operation, socket, renderings)

    def rendered(self, change: Any) -> bytes | None:
        """The `payload` JSON for a change, if some subscriber's delivery rendered it."""
        return self._renderings.get(self.selection, change)

    def write_now(self, payload: bytes) -> bool:
        """Write the `next` message if the socket takes it at once as a frame; False if
        not written (then `send` it)."""
        return (
            self._frames is not None
            and not self._operation.completed()
            and self._frames.write(self._prefix + payload + b"}")
        )

    async def render(self, change: Any, to_payload: Callable[[Any], object]) -> bytes | None:
        """The `payload` JSON for a change (the object the hub shares between mailboxes),
        executed on `to_payload(change)`; None when executing it gave errors."""
        if (text := self._renderings.get(self.selection, change)) is not None:
            return text
        if self._executor is None:
            self._executor = subscription_executor(
                self._info, self._operation.variables, self._operation.operation_name
            )
        result = await execute_event(self._executor, to_payload(change))
        if result.errors:
            return None  # the ordinary path reports errors the way Strawberry does
        text = orjson.dumps({"data": result.data})
        self._renderings.put(self.selection, change, text)
        return text

    async def send(self, payload: bytes) -> bool:
        """Write the `next` message; False once the operation is over or its socket gone
        (the connection's handler has seen it too, and cancels the operation)."""
        if self._operation.completed():
            return False
        message = self._prefix + payload + b"}"
        if self._frames is not None and self._frames.write(message):
            return True
        try:
            await self._socket.send_text(message.decode())
        except WebSocketDisconnect:
            return False
        return True


class DirectLine:
    """A subscription's updates written to its socket from the task that offers them.

    Its mailbox forwards each newer update here as the hub publishes it, and the line
    writes it at once, in the hub's task. What arrives during the pause between two
    deliveries waits for one timer, whose callback writes it the same way (a watched hot
    product keeps every line paused: a task and its wake-ups per delivery cost more than
    the write). Only what has to wait otherwise (a socket whose buffer is full, an
    execution that awaits) goes on in a task, and updates offered meanwhile queue behind
    it, latest per sku, in the mailbox's order.
    What cannot be rendered (errors) goes back to the mailbox with everything after it,
    and the subscription takes the ordinary path from then on.
    """

    def __init__(
        self,
        delivery: Delivery,
        mailbox: Mailbox,
        to_payload: Callable[[StockLevel], object],
        pause: float,
    ) -> None:
        self._delivery = delivery
        self._mailbox = mailbox
        self._to_payload = to_payload
        self._pause = pause
        self._loop = asyncio.get_running_loop()
        # When the next delivery may go out (the first results just did); 0: any time.
        self._next = self._loop.time() + pause if pause else 0.0
        self._pending: dict[str, StockLevel] = {}
        self._draining = False
        self._finishing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the pause's end, while one waits
        self._beat = 0.0  # when the timer is due
        self._closed = False

    def offer(self, levels: Sequence[StockLevel]) -> None:
        """Levels published together: written together, in one delivery."""
        if self._closed:
            return
        if self._draining or self._timer is not None:
            self._queue(levels)
            return
        # The common case, without a coroutine: no pause to wait out, the updates already
        # rendered for this selection, the socket taking the frames now.
        now = self._loop.time() if self._pause else 0.0
        if now < self._next:
            self._queue(levels)
            self._beat = self._on_beat()
            self._timer = self._loop.call_at(self._beat, self._pause_over)
            return
        self._deliver(levels, now)

    def _on_beat(self) -> float:
        """When a paused delivery goes out: the first multiple of the pause at or after
        `_next`. Every paused line of the process then delivers at the same instants, so
        all find the same latest update, rendered once for all of them; at its own
        moment each would find another and render it again (a graphql-core execution
        per delivery, most of what a watched hot product cost). At most one extra pause
        of delay, once: after a beat, the next one is a pause away (counted from the
        beat, not from when the loop got to it)."""
        # (less a hair, so that a beat plus a pause, in floating point, is the next beat)
        return max(self._next, math.ceil(self._next / self._pause - 1e-6) * self._pause)

    def _queue(self, levels: Iterable[StockLevel]) -> None:
        for level in levels:
            self._pending[level.sku] = level

    def _deliver(self, levels: Sequence[StockLevel], now: float) -> None:
        """Write `levels` now if they can be written at once; the rest to a task."""
        written = 0
        for level in levels:
            payload = self._delivery.rendered(level)
            if payload is None or not self._delivery.write_now(payload):
                break
            written += 1
        if written == len(levels):
            self._next = now + self._pause
            return
        self._queue(levels[written:])
        self._draining = True
        self._finishing = run_eagerly(self._drain())

    def _pause_over(self) -> None:
        self._timer = None
        if self._closed or not self._pending:
            return
        levels = list(self._pending.values())
        self._pending.clear()
        try:
            self._deliver(levels, self._beat)
        except Exception:  # as in _drain: the ordinary path meets it the way Strawberry does
            log.warning(
                "direct delivery failed; the subscription goes on without it", exc_info=True
            )
            self._give_back(levels)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._finishing is not None:
            self._finishing.cancel()
        # Nothing more to forward: the mailbox lets go of the line (no reference cycle
        # left for the garbage collector).
        self._mailbox.hand_back(())

    async def _drain(self) -> None:
        levels: list[StockLevel] = []
        try:
            while self._pending and not self._closed:
                # At most one delivery per interval; what arrives meanwhile coalesces. The
                # first change after a quiet spell goes out at once.
                beat: float | None = self._on_beat() if self._pause else None
                if beat is not None and (wait := beat - self._loop.time()) > 0:
                    await asyncio.sleep(wait)
                else:
                    beat = None
                levels = list(self._pending.values())
                self._pending.clear()
                while levels:
                    payload = await self._delivery.render(levels[0], self._to_payload)
                    if payload is None:
                        self._give_back(levels)
                        return
                    if not await self._delivery.send(payload):
                        self._closed = True
                        return
                    del levels[0]
                if self._pause:
                    self._next = (beat or self._loop.time()) + self._pause
        except Exception:
            # Never into the hub's loop: the ordinary path meets the failure the way
            # Strawberry does.
            log.warning(
                "direct delivery failed; the subscription goes on without it", exc_info=True
            )
            self._give_back(levels)
        finally:
            self._draining = False
            self._finishing = None

    def _give_back(self, levels: Iterable[StockLevel]) -> None:
        self._closed = True
        undelivered = {level.sku: level for level in levels}
        undelivered.update(self._pending)
        self._pending.clear()
        self._mailbox.hand_back(undelivered.values())


def run_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coroutine` in the caller's task up to its first real wait: None if it finished
    there (no task, nothing scheduled), else the task that finishes it. What Python
    3.12's eager tasks do, without a Task object for the common case."""
    try:
        waiting = coroutine.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_resume(coroutine, waiting))
    # However the task ends (even cancelled before it first ran), the coroutine's own
    # `finally` blocks run: closing a finished coroutine does nothing.
    task.add_done_callback(lambda _: coroutine.close())
    return task


async def _resume(coroutine: Coroutine[Any, Any, None], waiting: object) -> None:
    """Drive a coroutine that yielded `waiting` (a future, or None to let the loop run)
    as a task would: resume it when the future is done, its outcome raised inside it."""
    try:
        while True:
            if isinstance(waiting, asyncio.Future):
                await asyncio.wait((waiting,))
            else:
                await asyncio.sleep(0)
            waiting = coroutine.send(None)
    except StopIteration:
        return


def _variables_in(fields: list[FieldNode], info: GraphQLResolveInfo[Any]) -> set[str]:
    """Variables used by the fields' directives and selections (fragments followed)."""
    found: set[str] = set()
    seen_fragments: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, VariableNode):
            found.add(node.name.value)
        elif isinstance(node, FragmentSpreadNode):
            for directive in node.directives or ():
                walk(directive)
            name = node.name.value
            if name not in seen_fragments and name in info.fragments:
                seen_fragments.add(name)
                walk(info.fragments[name])
        elif isinstance(node, Node):
            for key in node.keys:
                walk(getattr(node, key, None))
        elif isinstance(node, tuple | list):
            for item in node:
                walk(item)

    for field in fields:
        walk(field.directives)
        walk(field.selection_set)
    return found
