"""RequestIdMiddleware: every HTTP response carries an X-Request-Id, the one the code
serving the request logs; a caller's own id is kept when it looks like one."""

from __future__ import annotations

import asyncio
import json
import re

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from inventory_graphql.request_id import RequestIdMiddleware, current_request_id
from tests.support.asgi import Exchange, exchange, http_scope


class App:
    """A Starlette app behind the middleware; its handler reports the request id it sees
    (what logs and error extensions carry)."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.arrived = 0

        async def handler(request: Request) -> Response:
            seen_before = current_request_id()
            self.arrived += 1
            if self.gate is not None:
                await self.gate.wait()
            return JSONResponse(
                {"before": seen_before, "after": current_request_id()},
                headers={"x-app": "kept"},
            )

        self.asgi = Starlette(
            routes=[Route("/", handler)], middleware=[Middleware(RequestIdMiddleware)]
        )


async def get(app: App, request_id: str | None = None) -> Exchange:
    headers = [] if request_id is None else [("x-request-id", request_id)]
    return await exchange(app.asgi, http_scope("GET", "/", headers))


def seen(result: Exchange) -> str:
    """The id the handler saw (the same before and after it awaited)."""
    body = json.loads(result.body)
    assert body["before"] == body["after"]
    return body["before"]


async def test_a_response_carries_the_id_its_request_was_served_under() -> None:
    result = await get(App())
    (header,) = result.header("x-request-id")
    assert re.fullmatch(r"[0-9a-f]{32}", header)
    assert seen(result) == header
    assert result.header("x-app") == ["kept"]  # the app's own headers stay


async def test_every_request_gets_a_fresh_id() -> None:
    app = App()
    ids = {(await get(app)).header("x-request-id")[0] for _ in range(20)}
    assert len(ids) == 20


async def test_a_callers_id_is_kept_when_it_looks_like_one() -> None:
    app = App()
    for given in ["abcd1234", "a" * 64, "lb-01.req_7f3A-9", "0123456789abcdef" * 4]:
        result = await get(app, given)
        assert result.header("x-request-id") == [given]
        assert seen(result) == given


async def test_a_callers_junk_is_never_echoed() -> None:
    app = App()
    for junk in [
        "",
        "short12",  # 7 characters
        "a" * 65,
        "has space1",
        "semi;colon1",
        "crlf1234\r\nSet-Cookie: x=1",
        "naïve-id-1234",
        "<script>alert(1)</script>",
    ]:
        result = await get(app, junk)
        (header,) = result.header("x-request-id")
        assert header != junk
        assert re.fullmatch(r"[0-9a-f]{32}", header), junk
        assert seen(result) == header


async def test_concurrent_requests_keep_their_own_ids() -> None:
    app = App()
    app.gate = asyncio.Event()
    first = asyncio.create_task(get(app, "request-one"))
    second = asyncio.create_task(get(app, "request-two"))
    while app.arrived < 2:  # until both are inside the handler, waiting at the gate
        await asyncio.sleep(0)
    app.gate.set()
    one, two = await first, await second
    assert seen(one) == "request-one" and seen(two) == "request-two"


async def test_the_id_does_not_outlive_its_request() -> None:
    app = App()
    await get(app, "leaky-id-123")
    assert current_request_id() == "-"


async def test_the_id_is_reset_when_the_app_fails() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    middleware = RequestIdMiddleware(broken)
    try:
        await exchange(middleware, http_scope("GET", "/", [("x-request-id", "failing-id-1")]))
    except RuntimeError:
        pass
    else:
        raise AssertionError("the app's failure was swallowed")
    assert current_request_id() == "-"


async def test_a_websocket_is_served_under_the_callers_id_and_its_messages_pass_untouched() -> None:
    seen_ids: list[str] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen_ids.append(current_request_id())
        await receive()
        await send({"type": "websocket.accept", "headers": []})
        await send({"type": "websocket.send", "text": "hello"})

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/graphql", "headers": [(b"x-request-id", b"ws-id-0001")]}
    await RequestIdMiddleware(app)(scope, receive, send)
    assert seen_ids == ["ws-id-0001"]
    assert sent == [
        {"type": "websocket.accept", "headers": []},
        {"type": "websocket.send", "text": "hello"},
    ]


async def test_lifespan_passes_through() -> None:
    """A lifespan scope has no headers; the middleware must not need them."""
    started: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.append(scope["type"])
        await send({"type": "lifespan.startup.complete"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    await RequestIdMiddleware(app)({"type": "lifespan"}, receive, send)
    assert started == ["lifespan"]
    assert sent == [{"type": "lifespan.startup.complete"}]
