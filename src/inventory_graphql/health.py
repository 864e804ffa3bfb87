"""`/livez` (the process answers) and `/readyz` (it can serve: database, schema, listener)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from inventory_graphql.database import migrations
from inventory_graphql.inventory.errors import is_database_unavailable


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    checks = {"database": False, "migrations": False, "listener": request.state.listener.connected}
    latest = migrations()[-1].version
    try:
        async with asyncio.timeout(1):
            applied = await request.state.service.pool.fetchval(
                "SELECT max(version) FROM schema_migration"
            )
        checks["database"] = True
        checks["migrations"] = applied == latest
    except Exception as error:
        if not is_database_unavailable(error):
            raise
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )
