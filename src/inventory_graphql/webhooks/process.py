"""`serve`'s webhook delivery in a process of its own, at a lower CPU priority.

In a flash sale every server process is busy; delivery done there (an event loop shared
with requests) took CPU from reservations (measured: about 7% of a core at 1,200 events a
second, and a few percent of the sale's holds). In a process of its own, niced, it waits
while the sale runs and catches up after: reservations win the CPU, webhooks lag for the
length of the rush. Nothing is lost by waiting: progress is in PostgreSQL, and the lock
per endpoint (delivery.py) is unchanged, so several `serve` instances still share the
endpoints and take over from each other.

The parent (`serve`) supervises it: started before the server, started again a second
after it dies (a crash, a kill -9: its locks went with its connection), stopped with
SIGTERM after the server stops. The child watches its parent and stops if the parent is
gone (a kill -9 of `serve`), so it never delivers orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping

from inventory_graphql.config import MAX_NICENESS, Settings
from inventory_graphql.database import connect_pool
from inventory_graphql.webhooks.delivery import WebhookWorker

log = logging.getLogger(__name__)

RESTART_SECONDS = 1.0
STOP_SECONDS = 10.0
PARENT_POLL_SECONDS = 0.5


def lower_priority(niceness: int) -> None:
    """`niceness` steps nicer; at the lowest (19) also Linux's SCHED_IDLE class where there
    is one. Niceness alone still left delivery its proportional share in a rush (weight 15
    of a server process's 1024: 0.03-0.04 cores beside 2 busy ones); SCHED_IDLE's weight
    is 3, and any runnable server process preempts it at once. Never zero: delivery still
    creeps on under a rush that does not end."""
    if niceness:
        os.nice(niceness)
    if niceness == MAX_NICENESS and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as error:  # a sandbox that forbids it: niceness alone, then
            log.warning("webhook delivery: SCHED_IDLE refused (%s); niceness only", error)


async def deliver(database_url: str, settings: Settings, parent: int | None) -> int:
    """The delivery process: a WebhookWorker until SIGTERM (or SIGINT, or, given `parent`,
    until that process is no longer this one's parent)."""
    lower_priority(settings.webhook_niceness)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if parent is None:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    else:
        # Ctrl-C reaches the whole process group: the parent decides when this one stops.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One pool connection: the worker only asks it, now and then, whether an endpoint
    # exists; it delivers on a connection of its own.
    small = dataclasses.replace(settings, pool_size=1)
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(connect_pool(database_url, small))
        await stack.enter_async_context(WebhookWorker(database_url, pool, settings).running())
        while not stop.is_set():
            if parent is not None and os.getppid() != parent:
                log.warning("webhook delivery: serve (%s) is gone; stopping", parent)
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PARENT_POLL_SECONDS):
                    await stop.wait()
    return 0


@contextlib.contextmanager
def delivery_process(env: Mapping[str, str]) -> Iterator[None]:
    """`inventory-graphql deliver-webhooks` as this process's child while the block runs,
    started again whenever it dies; `env` is added to its environment."""
    command = [
        sys.executable,
        "-m",
        "inventory_graphql",
        "deliver-webhooks",
        "--parent",
        str(os.getpid()),
    ]
    stopping = threading.Event()
    turn = threading.Lock()  # starting a child and stopping it do not interleave
    current: list[subprocess.Popen[bytes]] = []

    def supervise() -> None:
        while True:
            with turn:
                if stopping.is_set():
                    return
                child = subprocess.Popen(command, env={**os.environ, **env})
                current[:] = [child]
            code = child.wait()
            if stopping.is_set():
                return
            log.warning("webhook delivery process exited with %s; starting it again", code)
            if stopping.wait(RESTART_SECONDS):
                return

    thread = threading.Thread(target=supervise, name="webhook-delivery", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with turn:
            stopping.set()
            for child in current:
                child.terminate()
        for child in current:
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        thread.join()
