"""Refuse request bodies over a size, whether announced (Content-Length) or streamed."""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Read and discard up to this much of a refused body before answering, so an ordinary
# client gets its 413 instead of a connection reset; past it, the connection is dropped.
DRAIN_LIMIT = 2 * 1024 * 1024


class _TooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, receive, send, more_body=True)
            return
        received = 0
        more_body = True
        started = False

        async def counting_receive() -> Message:
            nonlocal received, more_body
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more_body = message.get("more_body", False)
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, receive, send, more_body=more_body)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, more_body: bool) -> None:
        drained = 0
        while more_body and drained <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            drained += len(message.get("body", b""))
            more_body = message.get("more_body", False)
        response = PlainTextResponse(
            f"Request body larger than {self.max_bytes} bytes.", status_code=413
        )
        await response(scope, receive, send)
