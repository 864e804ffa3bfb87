"""What a run measures: the plan, the loads, the series names, the server's settings."""

from __future__ import annotations

from dataclasses import dataclass
from secrets import token_hex

LOADS = {"hot": 1, "spread": 10_000}  # products under load
LOAD_TITLES = {"hot": "one hot product", "spread": "10,000 products"}
STOCK = 100_000_000  # units per seeded product: no point ever sells out
MODES = {"coalesced": "on", "per-request": "off"}  # INVENTORY_COALESCE_RESERVATIONS

PGBENCH = "pgbench"
PGBENCH_NOTIFY_OFF = "pgbench, NOTIFY off"
ASYNCPG = "raw asyncpg"  # a pool of 8 connections (asyncpg_loop.POOL), as earlier runs had
ASYNCPG_FULL_POOL = "raw asyncpg, pool = clients"  # a connection for every task
SERVICE = {mode: f"service ({mode})" for mode in MODES}
SERVICE_LIVE_ON = "service (coalesced), live updates on"
SERVICE_LIVE_OFF = "service (coalesced), live updates off"
# The live pairs' subscribers stand for browsers on other machines: niced, they read with
# the CPU the server leaves, not the server's (their CPU is still reported). The third
# point of each pair has them at the server's priority, as earlier runs did.
SUBSCRIBER_NICENESS = 10
SERVICE_LIVE_ON_SHARED = "service (coalesced), live updates on, subscribers not niced"
SERIES_TAGS = {  # sku prefixes: which point a product belongs to, for whoever looks later
    SERVICE["coalesced"]: "service-coalesced",
    SERVICE["per-request"]: "service-per-request",
    SERVICE_LIVE_ON: "service-live-on",
    SERVICE_LIVE_OFF: "service-live-off",
    SERVICE_LIVE_ON_SHARED: "service-live-on-shared",
}

# The design's statement, by id as pgbench and a raw loop would run it.
STATEMENT = (
    "UPDATE product SET reserved = reserved + 1, updated_at = now() "
    "WHERE id = {id} AND (quantity - reserved) >= 1 RETURNING id"
)

# bench.flash_sale runs `serve` as a user gets it: no --workers, serve's default (one
# worker per core).
SERVE_WORKERS: int | None = None
# The A/B benches pin two workers, as all their earlier runs on this 2-core machine had:
# an earlier commit's `serve` defaults to one worker (uvicorn's), which would halve "before".
AB_WORKERS = 2


def server_env(coalesce: str) -> dict[str, str]:
    # A configured admin token keeps `serve` from generating and printing one; the bench
    # needs no admin operation (it changes stock through SQL with ledger rows). The
    # per-client limits stay as a user gets them: wrk's requests and the subscribers come
    # as many shoppers (X-Forwarded-For, through 127.0.0.1, a trusted proxy).
    return {"INVENTORY_COALESCE_RESERVATIONS": coalesce, "INVENTORY_ADMIN_TOKEN": token_hex(16)}


@dataclass(frozen=True)
class Plan:
    """Durations and sizes; what a script does not measure stays at its empty default."""

    seconds: int = 0
    warmup_seconds: int = 0
    ceiling_clients: tuple[int, ...] = ()
    service_clients: tuple[int, ...] = ()
    live_off_clients: int = 0
    live_pairs: int = 0  # on/off pairs measuring what live updates cost
    subscribers: int = 0
    fanout_subscribers: tuple[int, ...] = ()
    fanout_changes: int = 0
    subscribers_per_process: int = 1250
    quiet_wait: float = 0  # seconds the whole run may spend in cpu.wait_until_quiet
