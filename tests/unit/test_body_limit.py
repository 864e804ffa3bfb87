"""BodySizeLimitMiddleware: bodies over the limit are answered 413, never handed whole to
the app, and never read without end; bodies within it reach the app intact."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from inventory_graphql.body_limit import DRAIN_LIMIT, BodySizeLimitMiddleware
from tests.support.asgi import exchange, http_scope

LIMIT = 1000


class App:
    """A Starlette app behind the middleware, as app.py stacks it, recording what its
    handler saw."""

    def __init__(self, max_bytes: int = LIMIT) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []

        async def echo(request: Request) -> Response:
            self.calls += 1
            body = await request.body()
            self.bodies.append(body)
            return PlainTextResponse(f"got {len(body)} bytes")

        async def no_body(request: Request) -> Response:
            self.calls += 1
            return PlainTextResponse("hello")

        self.asgi = Starlette(
            routes=[Route("/echo", echo, methods=["POST"]), Route("/", no_body)],
            middleware=[Middleware(BodySizeLimitMiddleware, max_bytes=max_bytes)],
        )


def posted(size: int, announce: bool = True) -> dict:
    headers = [("content-type", "application/json")]
    if announce:
        headers.append(("content-length", str(size)))
    return http_scope("POST", "/echo", headers)


async def test_a_body_at_the_limit_reaches_the_app_whole() -> None:
    app = App()
    body = bytes(range(256)) * 3 + b"x" * (LIMIT - 768)
    result = await exchange(app.asgi, posted(LIMIT), [body[:400], body[400:]])
    assert result.status == 200
    assert app.bodies == [body]


async def test_an_announced_body_over_the_limit_is_refused_before_the_app_runs() -> None:
    app = App()
    size = LIMIT + 1
    result = await exchange(app.asgi, posted(size), [b"x" * 500, b"x" * (size - 500)])
    assert result.status == 413
    assert str(LIMIT) in result.body.decode()
    assert app.calls == 0
    # The refused body is read and dropped, so an ordinary client gets its answer.
    assert result.body_read == size


async def test_a_malformed_content_length_is_refused() -> None:
    for length in ["-1", "abc", "1e3", "", " 10", "+5"]:
        app = App()
        scope = http_scope("POST", "/echo", [("content-length", length)])
        result = await exchange(app.asgi, scope, [b"x" * 10])
        assert result.status == 413, length
        assert app.calls == 0, length


async def test_a_streamed_body_is_cut_off_once_it_passes_the_limit() -> None:
    """No Content-Length (chunked): the app starts reading, the middleware stops it at the
    first chunk past the limit and answers 413; the handler never gets a body."""
    app = App()
    chunks = [b"y" * 300] * 10  # 3000 bytes, the limit is 1000
    result = await exchange(app.asgi, posted(0, announce=False), chunks)
    assert result.status == 413
    assert app.calls == 1 and app.bodies == []


async def test_a_streamed_body_within_the_limit_is_accepted() -> None:
    app = App()
    chunks = [b"z" * 250] * 4
    result = await exchange(app.asgi, posted(0, announce=False), chunks)
    assert result.status == 200
    assert app.bodies == [b"z" * LIMIT]


async def test_an_endless_refused_body_is_not_read_forever() -> None:
    """A client that streams without end gets at most DRAIN_LIMIT read before the
    middleware gives up on it (the server then drops the connection)."""
    chunk = b"e" * 65536

    def endless() -> Iterator[bytes]:
        for _ in range(10 * DRAIN_LIMIT // len(chunk)):
            yield chunk
        raise AssertionError("still reading ten times DRAIN_LIMIT in")

    for announce in (True, False):
        app = App()
        result = await exchange(app.asgi, posted(10**12, announce=announce), endless())
        assert result.body_read <= DRAIN_LIMIT + LIMIT + 2 * len(chunk), announce
        assert app.bodies == []


async def test_a_client_that_leaves_while_its_body_is_refused_gets_no_answer() -> None:
    app = App()
    result = await exchange(app.asgi, posted(LIMIT * 10), [b"x" * 100], leaves=True)
    assert result.sent == []
    assert app.calls == 0


async def test_requests_without_a_body_pass() -> None:
    app = App()
    result = await exchange(app.asgi, http_scope("GET", "/"))
    assert (result.status, result.body) == (200, b"hello")


async def test_a_response_already_started_is_not_followed_by_a_second_one() -> None:
    """An app that answers while still reading (streaming) cannot be given a 413 after its
    response began: the client sees the response end, never two response starts."""

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        more_body = True
        while more_body:
            message = await receive()
            more_body = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    guarded = BodySizeLimitMiddleware(streaming, max_bytes=LIMIT)
    result = await exchange(guarded, posted(0, announce=False), [b"s" * 400] * 5)
    assert result.status == 200
    assert len(result.body) <= LIMIT


async def test_websockets_pass_untouched() -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(await receive())
        await send({"type": "websocket.accept"})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/graphql", "headers": [(b"content-length", b"x")]}
    await BodySizeLimitMiddleware(app, max_bytes=1)(scope, receive, send)
    assert seen == [{"type": "websocket.connect"}]
    assert sent == [{"type": "websocket.accept"}]
