"""A webhook receiver for the benchmarks, in a process of its own (so its CPU is not the
server's), at the lowest CPU priority: `python -m bench.harness.webhook_receiver PORT`.

It verifies every message's Standard Webhooks signature (once told the secret, `PUT
/secret`), acknowledges with 204, and counts: messages, events (distinct cursors), repeats
of a webhook-id (retries), messages whose events did not follow the last ones in feed
order, and bad signatures. `GET /stats` answers the counts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inventory_graphql.config import MAX_NICENESS
from inventory_graphql.webhooks.process import lower_priority


def cursor_key(cursor: str) -> tuple[int, int]:
    key, _, id_ = cursor.partition(".")
    return int(key), int(id_)


@dataclass
class Received:
    messages: int = 0
    events: int = 0
    repeated_ids: int = 0
    out_of_order: int = 0
    bad_signatures: int = 0
    last_cursor: str | None = None
    seen_ids: set[str] = field(default_factory=set)

    def stats(self) -> dict[str, Any]:
        counts = asdict(self)
        del counts["seen_ids"]
        return counts


def events_of(body: Any) -> list[dict[str, Any]]:
    data = body.get("data", body) if isinstance(body, dict) else body
    if isinstance(data, dict) and isinstance(data.get("events"), list):
        return list(data["events"])
    return [data] if isinstance(data, dict) and "cursor" in data else []


def app() -> Starlette:
    received = Received()
    secret: list[bytes] = []

    async def set_secret(request: Request) -> Response:
        text = (await request.body()).decode().strip()
        secret[:] = [base64.b64decode(text.removeprefix("whsec_"))]
        return Response(status_code=204)

    async def deliver(request: Request) -> Response:
        body = await request.body()
        msg_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = (
            base64.b64encode(hmac.new(secret[0], signed, hashlib.sha256).digest())
            if (secret)
            else b""
        )
        given = [
            s.partition(",")[2].encode()
            for s in request.headers.get("webhook-signature", "").split()
        ]
        if not any(hmac.compare_digest(expected, g) for g in given):
            received.bad_signatures += 1
            return Response(status_code=401)
        received.messages += 1
        if msg_id in received.seen_ids:
            received.repeated_ids += 1
            return Response(status_code=204)
        received.seen_ids.add(msg_id)
        for event in events_of(orjson.loads(body)):
            cursor = event["cursor"]
            if received.last_cursor is not None and cursor_key(cursor) <= cursor_key(
                received.last_cursor
            ):
                received.out_of_order += 1
            received.last_cursor = cursor
            received.events += 1
        return Response(status_code=204)

    async def stats(request: Request) -> Response:
        return JSONResponse(received.stats())

    return Starlette(
        routes=[
            Route("/", deliver, methods=["POST"]),
            Route("/secret", set_secret, methods=["PUT"]),
            Route("/stats", stats),
        ]
    )


def main() -> None:
    # The receiver stands for another machine: on this one it takes only CPU nobody else
    # wants (as the service's own delivery process does, webhooks/process.py).
    lower_priority(MAX_NICENESS)
    uvicorn.run(app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")


if __name__ == "__main__":
    main()
