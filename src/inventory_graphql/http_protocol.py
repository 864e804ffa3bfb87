"""uvicorn's httptools protocol with the HTTP limits applied: the fence around uvicorn.

uvicorn takes its HTTP protocol as a class (`http=`, its extension point); `serve` passes
`LimitedHttp`, which builds `LimitedHttpToolsProtocol` for each connection. The limits
(http_limits.py) cost O(1) per request and copy no bodies: a byte budget per request head
checked once per read, one timer per connection re-armed lazily, one count per accept.

What of uvicorn's, beyond its documented `http=` extension point, this module relies on
(FENCED_VERSIONS; tests/unit/test_internals.py fails when the installed versions differ
and checks each name): HttpToolsProtocol's parser callbacks (`on_message_begin`,
`on_headers_complete`, `on_message_complete`), `data_received`, `connection_made`,
`connection_lost`, `handle_websocket_upgrade`; its attributes `app` (swapped per
connection to answer 431), `scope` (the request's, given to its cycle in
`on_headers_complete`: it carries the connection's `HangUp`), `headers`, `url`, `cycle`,
`pipeline`, `flow`, `connections`,
`loop`, `transport`; RequestResponseCycle's `response_started`, `response_complete`, `keep_alive`,
`disconnected`, `message_event`; the keyword arguments uvicorn's server builds a
protocol with (`config`, `server_state`, `app_state`, `_loop`); and its proxy headers
middleware's `trusted_hosts`, a `_TrustedHosts` (see `FastTrustedHosts`).

Text frames (`TextFrames`, direct delivery's socket write): after an upgrade, the
WebSocketsSansIOProtocol's `scope` (its `extensions`), and at each write its `transport`,
`writable` (cleared while the transport's buffer is full), `close_sent`, `disconnected`,
`handshake_complete`, `initial_response` and `conn` (websockets' ServerProtocol: `state`,
`extensions`).
"""

from __future__ import annotations

import asyncio
import http
import struct
import weakref
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, cast

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware, _TrustedHosts
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import State

from inventory_graphql.config import Settings
from inventory_graphql.http_limits import (
    LINGER_SECONDS,
    MAX_LINGERING,
    ConnectionCounts,
    HttpLimits,
    TrustedPeers,
)

FENCED_VERSIONS = {"uvicorn": "0.55.0", "httptools": "0.9.0", "websockets": "17.4"}

# A connection's phase. Plain ints, compared on every read (the last two in order).
HEAD = 0  # reading a request head (request line and headers)
BODY = 1  # reading a request body
IDLE = 2  # nothing to read: waiting for the app, or kept alive (uvicorn's own timeout)
CLOSING = 3  # refused: what the client sends is dropped until it closes or LINGER_SECONDS
DETACHED = 4  # upgraded to a WebSocket, or closed: the limits here no longer apply

# A refused connection is told when to come back.
RETRY_AFTER_SECONDS = 5
# A timer may fire this early (the event loop's clock granularity); still due.
TIMER_SLACK = 0.001


def installed_versions() -> dict[str, str]:
    return {name: version(name) for name in FENCED_VERSIONS}


class LimitedHttp:
    """What `serve` passes as uvicorn's `http=`: uvicorn calls it like a protocol class.

    Holds the per-process connection counts; a worker process gets its own copy, with
    counts of its own, when uvicorn sends it its config (pickled)."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.counts: ConnectionCounts | None = None

    def __reduce__(self) -> tuple[type[LimitedHttp], tuple[HttpLimits]]:
        return LimitedHttp, (self.limits,)

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> LimitedHttpToolsProtocol:
        if self.counts is None:
            # uvicorn's own trusted proxies (FORWARDED_ALLOW_IPS), read once per process.
            self.counts = ConnectionCounts(self.limits, TrustedPeers(config.forwarded_allow_ips))
            if isinstance(config.loaded_app, ProxyHeadersMiddleware):
                config.loaded_app.trusted_hosts = FastTrustedHosts(config.forwarded_allow_ips)
        return LimitedHttpToolsProtocol(config, server_state, app_state, _loop, self.counts)


class FastTrustedHosts(_TrustedHosts):
    """uvicorn's trust in a forwarding proxy, without parsing every client's address.

    Behind a load balancer each request's X-Forwarded-For names its client, and uvicorn
    parses it (ipaddress) to learn that it is not a trusted proxy; its cache of 4,096
    answers does not hold a sale's crowd: 2-3% of a reservation's CPU. An IPv4 address has
    one spelling (ipaddress refuses leading zeros), so with no trusted network a host
    without ':' is trusted exactly when it is a trusted address's text or a trusted
    literal; anything else (IPv6, networks) takes uvicorn's own path."""

    def __init__(self, trusted_hosts: list[str] | str) -> None:
        super().__init__(trusted_hosts)
        self._fast = not self.always_trust and not self.trusted_networks
        self._texts = {str(host) for host in self.trusted_hosts if host.version == 4}
        self._texts |= self.trusted_literals

    def __contains__(self, host: str | None) -> bool:
        if self._fast and host and ":" not in host:
            return host in self._texts
        return super().__contains__(host)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None,
        counts: ConnectionCounts,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._counts = counts
        self._limits = counts.limits
        self._admitted = False
        self._lingering = False
        self._key: str | None = None  # the client address this connection is counted under
        self._host: str | None = None
        self._phase = HEAD
        # Bytes the current head may still take, counted per read before it is parsed.
        self._head_left = counts.limits.max_header_bytes
        # False when the head began in the middle of a read (a request pipelined behind
        # another): its size is then measured from what was parsed, at its end.
        self._head_counted = True
        # Why the head just parsed is refused (431), if it is.
        self._refusal: str | None = None
        self._hang_up: HangUp | None = None  # the connection's, once a request needs it
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # Connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self._host = peer[0] if isinstance(peer, tuple) and peer else None
        refusal, self._key = self._counts.admit(self._host, len(self.connections))
        if refusal is not None:
            # Refused before anything is parsed; uvicorn never sees this connection.
            self.transport = transport
            self._refuse(503, refusal, retry_after=RETRY_AFTER_SECONDS)
            return
        self._admitted = True
        super().connection_made(transport)
        self._set_deadline(self._limits.header_timeout)  # the first head: from accept

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = DETACHED
        if self._hang_up is not None:
            self._hang_up.happened()
            self._hang_up = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lingering:
            self._counts.lingering -= 1
            self._lingering = False
        if not self._admitted:
            return
        if self._key is not None:
            self._counts.release(self._key)
            self._key = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        if self._refusal is not None:
            self._refuse(431, self._refusal)
            return
        self._phase = DETACHED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().handle_websocket_upgrade()
        TextFrames.offer(self.transport.get_protocol())
        key, self._key = self._key, None
        if key is None:
            return
        # The WebSocket protocol owns the connection from here: it gives the client's
        # slot back when the connection ends (its own method, wrapped on the instance).
        protocol = self.transport.get_protocol()
        lost = protocol.connection_lost
        counts = self._counts

        def connection_lost(exc: Exception | None) -> None:
            try:
                lost(exc)
            finally:
                counts.release(key)

        setattr(protocol, "connection_lost", connection_lost)  # noqa: B010

    # Reading

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase == IDLE:  # the first byte of the next request on a kept-alive connection
            self._start_head()
        elif phase >= CLOSING:  # refused or detached: dropped
            return
        if self._phase == HEAD:
            left = self._head_left
            if len(data) > left:
                self._read_past_budget(data, left)
                return
            self._head_left = left - len(data)
        super().data_received(data)

    def _read_past_budget(self, data: bytes, left: int) -> None:
        """This read holds more than the head may still take: parse only that much; if the
        head is still not complete it is too large, else parse the rest (memoryview
        slices, so a body in the same read is not copied)."""
        view = memoryview(data)
        self._head_left = 0
        super().data_received(cast(bytes, view[:left]))
        if self.transport.is_closing() or self._phase in (CLOSING, DETACHED):
            return
        if self._phase == HEAD and self._head_left == 0:  # not a new head begun in the slice
            limit = self._limits.max_header_bytes
            self._refuse_head(431, f"request line and headers over {limit} bytes")
            return
        self.data_received(cast(bytes, view[left:]))

    def _start_head(self) -> None:
        self._phase = HEAD
        self._head_left = self._limits.max_header_bytes
        self._head_counted = True
        self._set_deadline(self._limits.header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase == IDLE:  # began in the middle of a read, after another request
            self._start_head()
            self._head_counted = False

    def on_headers_complete(self) -> None:
        limits = self._limits
        if len(self.headers) > limits.max_headers:
            self._refusal = f"more than {limits.max_headers} header fields"
        elif not self._head_counted and self._head_size() > limits.max_header_bytes:
            self._refusal = f"request line and headers over {limits.max_header_bytes} bytes"
        if self._refusal is not None:
            # Answered through uvicorn's own response path (a WebSocket handshake: see
            # handle_websocket_upgrade); the connection closes after it.
            self._counts.refusals.note(f"431 {self._refusal}", self._host)
            self.app = _refusal_app(self._refusal)
        # What waits on the client's hang-up is told when the connection is lost (one per
        # connection: requests pipelined on it all wait on it).
        if self._hang_up is None:
            self._hang_up = HangUp()
        scope = cast(dict[str, Any], self.scope)
        scope.setdefault("extensions", {})[HANG_UP] = self._hang_up
        super().on_headers_complete()
        self._phase = BODY
        self._set_deadline(limits.body_timeout)

    def _head_size(self) -> int:
        # As sent, give or take the whitespace the parser dropped.
        fields = sum(len(name) + len(value) + 4 for name, value in self.headers)
        return len(self.url) + fields + 16

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._phase == BODY:
            self._phase = IDLE
            self._deadline = None

    # Deadlines: one timer per connection, re-armed when it fires early for a later one.

    def _set_deadline(self, seconds: float) -> None:
        deadline = self.loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._phase == DETACHED:
            return
        if self.loop.time() + TIMER_SLACK < deadline:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            return
        self._deadline = None
        self._expire()

    def _expire(self) -> None:
        phase, cycle = self._phase, self.cycle
        if phase == CLOSING:
            self.transport.close()
        elif phase == BODY:
            if cycle is None or cycle.response_started or self.pipeline:
                # Answered already, or queued behind an answer still going out (pipelined):
                # a 408 now could land in the middle of that answer.
                self.transport.close()
                return
            # Its app stops waiting for the body, and what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(408, f"request body not received within {self._limits.body_timeout:g} s")
        elif self._head_left == self._limits.max_header_bytes and cycle is None:
            # Nothing sent at all (a browser's preconnected socket, say): close quietly, as
            # nginx does; a 408 there can be taken for the answer to a later request.
            self.transport.close()
        else:
            timeout = self._limits.header_timeout
            self._refuse_head(408, f"request line and headers not received within {timeout:g} s")

    # Refusing

    def _refuse_head(self, status: int, reason: str) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A head pipelined behind a request still being answered: that answer goes out,
            # then uvicorn closes the connection; nothing more is read.
            self._counts.refusals.note(f"{status} {reason}", self._host)
            cycle.keep_alive = False
            self._phase = CLOSING
            return
        self._refuse(status, reason)

    def _refuse(self, status: int, reason: str, retry_after: int | None = None) -> None:
        """Answer `status` with `reason`, then close: after the answer the write side is
        shut and input is read and dropped until the client closes or LINGER_SECONDS pass,
        so the client reads the answer rather than a reset."""
        self._phase = CLOSING
        self._counts.refusals.note(f"{status} {reason}", self._host)
        body = reason.encode() + b"\n"
        head = [
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "content-type: text/plain; charset=utf-8",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        transport = self.transport
        transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        # Connections refused at accept are not counted, so at most MAX_LINGERING linger.
        if not transport.can_write_eof() or (
            not self._admitted and self._counts.lingering >= MAX_LINGERING
        ):
            transport.close()
            return
        transport.write_eof()
        if not self._admitted:
            self._counts.lingering += 1
            self._lingering = True
        if self.flow is not None:
            self.flow.resume_reading()
        self._set_deadline(LINGER_SECONDS)


def _refusal_app(reason: str) -> Any:
    """An ASGI app answering 431 with `reason` and closing: a head whose size or field
    count is known only once parsed is refused through uvicorn's own response path."""
    body = reason.encode() + b"\n"

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return refuse


# Where an HTTP request's scope carries its HangUp.
HANG_UP = "inventory.hang_up"


class HangUp:
    """Callbacks for when a connection is lost: a wait on the client's hang-up without a
    task per request reading for `http.disconnect` (api/disconnect.py)."""

    __slots__ = ("callbacks",)

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], object]] = []

    def happened(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


# Where a WebSocket's scope carries its TextFrames, when it has one.
TEXT_FRAMES = "inventory.text_frames"


class TextFrames:
    """A WebSocket's text messages written as frames straight to its transport.

    What uvicorn and websockets do per message (encode the text, build a Frame, check it,
    serialize it, join the output) is the same for every subscriber of an update; direct
    delivery builds the bytes once and writes them here. Offered only on a connection
    without extensions (permessage-deflate would compress per socket: websockets' own
    path does that). A write is refused, for the caller to send the ordinary way, whenever
    that way would not write at once: the transport's buffer full, the connection not open.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        # Weak: the scope holding this belongs to the protocol (no reference cycle).
        self._protocol = weakref.ref(protocol)

    @classmethod
    def offer(cls, protocol: object) -> None:
        """Put a TextFrames in an upgraded connection's scope, when it can have one."""
        scope = getattr(protocol, "scope", None)
        if (
            isinstance(protocol, WebSocketsSansIOProtocol)
            and isinstance(scope, dict)
            and not protocol.conn.extensions
        ):
            scope["extensions"][TEXT_FRAMES] = cls(protocol)

    def write(self, text: bytes) -> bool:
        """Write `text` (UTF-8) as one text message; False if it was not written."""
        protocol = self._protocol()
        if (
            protocol is None
            or protocol.close_sent
            or protocol.disconnected
            or not protocol.handshake_complete
            or protocol.initial_response is not None
            or not protocol.writable.is_set()
            or protocol.conn.state is not State.OPEN
        ):
            return False
        protocol.transport.write(text_frame_header(len(text)) + text)
        return True


def text_frame_header(length: int) -> bytes:
    """A server's (unmasked) final text frame's header for a payload of `length` bytes
    (RFC 6455 5.2)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """uvicorn's `http=` for a server process with these settings (call before the server
    starts: it raises the process's file limit). uvicorn only calls what it is given with
    a protocol class's keyword arguments, so a LimitedHttp serves as one."""
    return cast("type[asyncio.Protocol]", LimitedHttp(HttpLimits.for_process(settings)))
