"""The floors bench.cpu_per_request measures the service against, each a uvicorn app
(`uvicorn --factory bench.harness.floors:<name>`): what any Starlette JSON route costs
(the HTTP floor), and a bare Strawberry app with parser and validation caches answering
`{ ping }` (the GraphQL floor: Strawberry's view, parse and validate cached, execute)."""

from __future__ import annotations

import strawberry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.extensions import ParserCache, ValidationCache


async def _ping(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"data": {"ping": "pong" if body else None}})


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/graphql", _ping, methods=["POST"])])


@strawberry.type
class _Query:
    @strawberry.field
    def ping(self) -> str:
        return "pong"


def strawberry_app() -> Starlette:
    schema = strawberry.Schema(
        query=_Query,
        extensions=[lambda: ParserCache(maxsize=100), lambda: ValidationCache(maxsize=100)],
    )
    return Starlette(routes=[Route("/graphql", GraphQL(schema), methods=["POST"])])
