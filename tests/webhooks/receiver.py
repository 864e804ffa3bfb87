"""A webhook receiver in a process of its own, for the tests: a Starlette app under
uvicorn that verifies Standard Webhooks signatures on its own (not with the service's
code) and appends every request it gets to a JSON-lines file, so what it got survives its
restarts.

Run: python -m tests.webhooks.receiver PORT RECORD_FILE. POST /control {"path", "secret",
"mode"} sets a path's secret and how it answers: "ok" (204), "fail" (500), "gone" (410),
"redirect" (307 to /elsewhere) or "stall" (answers after 60 s).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

STATUS = {"ok": 204, "fail": 500, "gone": 410, "redirect": 307}
TOLERANCE_SECONDS = 300  # the specification's


def verified(secret: str, headers: Any, body: bytes) -> bool:
    """The Standard Webhooks check: HMAC-SHA256 over "{id}.{timestamp}.{body}" with the
    base64-decoded secret, any of the space-separated v1 signatures, a recent timestamp."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
        signatures = headers["webhook-signature"].split(" ")
    except KeyError:
        return False
    if abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        return False
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac).decode()
    return any(
        version == "v1" and hmac.compare_digest(expected, given)
        for version, _, given in (s.partition(",") for s in signatures)
    )


def make_app(record: Path) -> Starlette:
    paths: dict[str, dict[str, str]] = {}

    async def control(request: Request) -> Response:
        given = await request.json()
        paths.setdefault(given["path"], {}).update(
            {k: v for k, v in given.items() if k in ("secret", "mode")}
        )
        return JSONResponse({"ok": True})

    async def hook(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        setup = paths.get(path, {})
        mode = setup.get("mode", "ok")
        if mode == "stall":
            await asyncio.sleep(60)
        status = STATUS.get(mode, 500)
        entry = {
            "path": path,
            "id": request.headers.get("webhook-id"),
            "timestamp": request.headers.get("webhook-timestamp"),
            "verified": verified(setup.get("secret", ""), request.headers, body),
            "status": status,
            "body": body.decode(),
            "at": time.time(),
        }
        with record.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        headers = {"location": "/elsewhere"} if status == 307 else None
        return Response(status_code=status, headers=headers)

    return Starlette(
        routes=[
            Route("/control", control, methods=["POST"]),
            Route("/{path:path}", hook, methods=["POST"]),
        ]
    )


def main() -> None:
    port, record = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(make_app(record), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
