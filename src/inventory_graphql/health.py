"""`/livez` (the process answers) and `/readyz` (it can serve: database, schema, listener)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse

from inventory_graphql.database import latest_migration
from inventory_graphql.inventory.errors import is_database_unavailable
from inventory_graphql.state import app_state


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    state = app_state(request)
    checks = {"database": False, "migrations": False, "listener": state["listener"].connected}
    try:
        async with asyncio.timeout(1):
            applied = await state["service"].schema_version()
        checks["database"] = True
        checks["migrations"] = applied == latest_migration()
    except Exception as error:
        if not is_database_unavailable(error):
            raise
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", **checks}, status_code=200 if ready else 503
    )
