"""Driving an ASGI app directly: one HTTP exchange in, what the app sent out.

No HTTP client and no server: the unit tests call the ASGI callable with a scope, a
`receive` that hands out the body in the chunks given, and a `send` that records.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass
class Exchange:
    """What happened during one request: the messages sent and how much body was read."""

    sent: list[Message] = field(default_factory=list)
    body_read: int = 0  # bytes the app (and its middleware) took from the client
    receives: int = 0

    @property
    def starts(self) -> list[Message]:
        return [m for m in self.sent if m["type"] == "http.response.start"]

    @property
    def status(self) -> int:
        (start,) = self.starts  # exactly one response, or the exchange is broken
        return start["status"]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        (start,) = self.starts
        return list(start.get("headers", []))

    def header(self, name: str) -> list[str]:
        """Every value of header `name` in the response."""
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def http_scope(
    method: str = "POST", path: str = "/", headers: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def exchange(
    app: ASGIApp,
    scope: dict[str, Any],
    chunks: Iterable[bytes] = (),
    *,
    leaves: bool = False,
) -> Exchange:
    """Run one request through `app`. The body arrives in `chunks` (which may be endless);
    after the last one, every further receive says the client disconnected. If `leaves`,
    the client disconnects before finishing its body: every chunk says more is coming."""
    result = Exchange()
    pending: Iterator[bytes] = iter(chunks)
    lookahead = next(pending, None)
    finished = False

    async def receive() -> Message:
        nonlocal lookahead, finished
        result.receives += 1
        if finished or lookahead is None:
            finished = True
            return {"type": "http.disconnect"}
        chunk, lookahead = lookahead, next(pending, None)
        result.body_read += len(chunk)
        if lookahead is None:
            finished = True
        more_body = leaves or lookahead is not None
        return {"type": "http.request", "body": chunk, "more_body": more_body}

    async def send(message: Message) -> None:
        result.sent.append(message)

    if lookahead is None:  # no body at all: one empty message, as servers send
        lookahead, pending = b"", iter(())
    await app(scope, receive, send)
    return result
