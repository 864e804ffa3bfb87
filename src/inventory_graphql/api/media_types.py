"""GraphQL over HTTP's media types on `/graphql`: what the client accepts decides the answer.

The spec (since 2025-01-01) wants `application/graphql-response+json` for clients that ask
for it, and with it the status to say whether the request ran: a request error (the
document does not parse or validate, its variables do not coerce) is a 4xx without a
`data` entry, while field errors stay 200. Strawberry answers every request as
`application/json`, a request error as 200 with `"data": null`. This layer, outside both
the lean path and Strawberry's view (an ASGI app around them: the public extension point
both share), chooses the media type from `Accept` and rewrites a request error's answer
when the client took the new type; `application/json` answers keep their shape. An
`Accept` that allows neither type is refused 406 (a browser asking for GraphiQL's page is
not: it accepts `text/html`). Other methods than GET and POST are refused 405 here.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

GRAPHQL_RESPONSE = b"application/graphql-response+json"
JSON = b"application/json"
CHARSET = b"; charset=utf-8"
# Every JSON answer of /graphql, built with it where it is built (the view, the lean path,
# the 401 and 429 refusals): application/json answers pass this layer as they are.
JSON_UTF8 = (JSON + CHARSET).decode()
# Largest answer this layer reads to rewrite; past it an answer goes out as it is (a
# request error's answer is a few hundred bytes).
MAX_REWRITE_BYTES = 64 * 1024


def preferred(accept: bytes | None) -> bytes | None:
    """The media type to answer with for an `Accept` header, by quality then by the
    client's order; None when it allows neither (and nothing like `*/*`)."""
    if accept is None or not accept.strip():
        return JSON  # the spec's choice for a client that says nothing
    best: tuple[float, int, bytes] | None = None
    for index, item in enumerate(accept.split(b",")):
        media, *params = (part.strip() for part in item.split(b";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition(b"=")
            if name.strip().lower() == b"q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if quality <= 0:
            continue
        if media == GRAPHQL_RESPONSE:
            chosen = GRAPHQL_RESPONSE
        elif media in (JSON, b"application/*", b"*/*"):
            chosen = JSON
        else:
            continue
        # Higher quality first; at equal quality the client's order decides.
        if best is None or (quality, -index) > (best[0], -best[1]):
            best = (quality, index, chosen)
    return best[2] if best is not None else None


def _accepts_html(accept: bytes | None) -> bool:
    return accept is not None and b"text/html" in accept.lower()


class GraphQLMediaTypes:
    def __init__(self, app: ASGIApp, path: str = "/graphql") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "POST", "HEAD", "OPTIONS"):
            # Answered here: the storefront's mount at / would answer it otherwise, as a
            # static file's 405 (Allow: GET, HEAD).
            await _refuse(send, 405, "Method not allowed: send a GET or a POST.", "GET, POST")
            return
        accept = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value if accept is None else accept + b"," + value
        media = preferred(accept)
        if media is None:
            if scope["method"] == "GET" and _accepts_html(accept):
                await self.app(scope, receive, send)  # GraphiQL's page, or its refusal
                return
            await _not_acceptable(send)
            return
        if media == JSON:
            # As the app answers: every JSON answer of /graphql carries the charset where
            # it is built (the view, the lean path, the 401 and 429 refusals).
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, _as_graphql_response(send))


async def _not_acceptable(send: Send) -> None:
    await _refuse(
        send,
        406,
        "Not acceptable: this endpoint answers application/graphql-response+json or "
        "application/json.",
    )


async def _refuse(send: Send, status: int, message: str, allow: str | None = None) -> None:
    code = {405: "METHOD_NOT_ALLOWED", 406: "NOT_ACCEPTABLE"}[status]
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
    headers = [(b"content-type", JSON + CHARSET), (b"content-length", str(len(body)).encode())]
    if allow is not None:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _retyped(headers: list[tuple[bytes, bytes]], media: bytes) -> list[tuple[bytes, bytes]] | None:
    """The headers with a JSON content type replaced by `media` with the charset; None
    when the answer is not JSON (GraphiQL's page, a plain-text refusal)."""
    out = []
    found = False
    for name, value in headers:
        if name == b"content-type" and value.split(b";", 1)[0].strip().lower() == JSON:
            out.append((name, media + CHARSET))
            found = True
        else:
            out.append((name, value))
    return out if found else None


def _as_graphql_response(send: Send) -> Send:
    """Answers as application/graphql-response+json: a 200 that is a request error (null
    or no data, and no error with a path: none came from a field) becomes 400 without
    `data`."""
    held: Message | None = None  # a 200 JSON answer's start, until its body is read
    chunks: list[bytes] = []
    size = 0

    async def sending(message: Message) -> None:
        nonlocal held, size
        if message["type"] == "http.response.start":
            headers = _retyped(list(message.get("headers", ())), GRAPHQL_RESPONSE)
            if headers is None:
                await send(message)
            elif message["status"] != 200:
                await send({**message, "headers": headers})
            else:
                held = {**message, "headers": headers}
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = bool(message.get("more_body", False))
        if more and size <= MAX_REWRITE_BYTES:
            return
        body = b"".join(chunks)
        status = 200
        if not more:
            status, body = _request_error(body)
        start, held = held, None
        chunks.clear()
        headers = start["headers"]
        if not more:  # the body may have lost its data entry
            headers = [
                (name, str(len(body)).encode() if name == b"content-length" else value)
                for name, value in headers
            ]
        await send({**start, "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": more})

    return sending


def _request_error(body: bytes) -> tuple[int, bytes]:
    try:
        result = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 200, body
    if (
        isinstance(result, dict)
        and result.get("data") is None
        and isinstance(errors := result.get("errors"), list)
        and errors
        and all(isinstance(e, dict) and "path" not in e for e in errors)
    ):
        return 400, orjson.dumps({k: v for k, v in result.items() if k != "data"})
    return 200, body
