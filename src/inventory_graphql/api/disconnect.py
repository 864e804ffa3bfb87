"""A reserve whose HTTP client hangs up is abandoned, not finished for nobody.

Starlette does not cancel a request's work when its client disconnects, so a hold would
be granted to a request nobody awaits any more. Here the work is raced against the ASGI
`http.disconnect` message and cancelled when it comes first; the service then drops the
request, or gives its hold back. Over WebSocket, Strawberry already cancels an operation
when it is completed or the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import HTTPConnection, Request

from inventory_graphql.inventory.errors import Busy

T = TypeVar("T")


async def unless_disconnected(connection: HTTPConnection, work: Awaitable[T]) -> T:
    if not isinstance(connection, Request):
        return await work
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_hung_up(connection))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise Busy("the client disconnected")  # nobody reads this answer
    return task.result()


async def _hung_up(request: Request) -> None:
    # The body has been read: the next message is http.disconnect, when the client hangs
    # up (or once the response is complete, by which time nobody is waiting for this).
    while (await request.receive())["type"] != "http.disconnect":
        pass
