"""Reservations before and after: an earlier commit and this working tree, side by side.

    python -m bench.reserve_ab 5007435                        # 3 rounds, 8 s a point
    python -m bench.reserve_ab 5007435 --rounds 3 --seconds 10

Needs `pip install -e '.[test,bench]'` and `wrk` on PATH. "before" is the earlier
commit's src/, exported (git archive) to a temporary directory; "after" is this
checkout's src/ as it is on disk, uncommitted changes included, copied to a temporary
directory when the run starts (so edits made while it runs change nothing; the JSON
records the diff against HEAD that was measured). Each is put first on its processes'
PYTHONPATH.

One PostgreSQL server (embedded, or BENCH_DATABASE_URL's) and one fresh database,
migrated by this checkout (create_migrated_database): the working tree may add
migrations, and an older commit's `serve` applies only those it knows, skipping the rest.
The run checks that both versions import from where they should before measuring.

Per round (default 3), for each load ("hot": one product, "spread": 10,000 products, as
in bench.flash_sale) and each client count (16, 64): one service point for "before" and
one for "after", back to back, the order alternating from round to round, so a shared
machine's drift hits both alike. Every point gets a server process of its own (`serve
--workers 2`, INVENTORY_COALESCE_RESERVATIONS=on, as in bench.flash_sale), warmed up on a
product of its own, and products of its own; it is bench.flash_sale.service_point: wrk
with one reserve document per request, 100 WebSocket subscribers on the point's first
product (--subscribers 0: none), CPU per process group, and the verdicts once in-flight
requests have settled (no product oversold, Reservations counted equal the stock
consumed up to the requests cut off by wrk's stop, every answer a Reservation, and
`inventory-graphql check` passes on the whole database).

Printed per (load, clients): holds/s, p50 and p99 latency (wrk's) and the server's CPU
per answered request, the median over rounds of each version, and the median of the
per-round after/before ratios (for holds/s higher is better for after, for the others
lower). The acceptance criterion, coalesced holds/s within 10% of before, is marked per
point (after/before >= 0.90). Points during which processes not ours used 0.5 cores or
more are marked "!". Saved to bench-results/reserve_ab.json. Exit 1 if a verdict failed
or a point could not be measured.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench.common import ROOT, machine, postgres, save, server_process
from bench.fanout_ab import describe, export_src
from bench.flash_sale import (
    LOAD_TITLES,
    LOADS,
    SERVE_ARGS,
    SERVICE,
    Bench,
    Plan,
    cpu_text,
    disturbed,
    postgres_settings,
    raise_open_files_limit,
    server_env,
    service_point,
    warm_up,
)
from inventory_graphql.database import create_migrated_database

DATABASE = "inventory_bench_reserve_ab"
VERSIONS = ("before", "after")
CLIENTS = (16, 64)
ACCEPT = 0.90  # after/before holds/s at least this: within 10% of before
METRICS = {  # key in a point -> (label, format)
    "rate": ("holds/s", ".0f"),
    "p50_ms": ("p50 ms", ".1f"),
    "p99_ms": ("p99 ms", ".1f"),
    "server_us_per_request": ("server CPU us/req", ".0f"),
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def snapshot_src(into: Path) -> dict[str, Any]:
    """This checkout's src/ as it is on disk, copied under `into`; what differs from HEAD."""
    shutil.copytree(
        ROOT / "src", into / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    diff = git("diff", "HEAD", "--", "src")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "src").split()
    return {
        "commit": describe("HEAD"),
        "src_changed": bool(diff or untracked),
        "diff_stat": git("diff", "HEAD", "--stat", "--", "src").strip(),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16],
        "untracked": untracked,
        "diff": diff,
    }


def imported_from(pythonpath: str) -> str:
    """Where a process with this PYTHONPATH imports the service from."""
    done = subprocess.run(
        [sys.executable, "-c", "import inventory_graphql; print(inventory_graphql.__file__)"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


async def applied_migrations(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT version, name FROM schema_migration ORDER BY version")
    return [f"{r['version']:03}_{r['name']}" for r in rows]


async def measure(
    bench: Bench, env: dict[str, str], load: str, clients: int, repeat: int
) -> dict[str, Any]:
    """One service point on a server process of its own."""
    with server_process(bench.url, env, SERVE_ARGS) as base_url:
        await warm_up(bench, base_url, f"{load}.{clients}.{repeat}")
        point = await service_point(
            bench, SERVICE["coalesced"], base_url, load, clients, bench.plan.subscribers > 0, repeat
        )
    wrk = point.detail["wrk"]
    seconds = wrk["duration_us"] / 1e6
    # Server CPU per answered request (its cores over the point times the point's length).
    server_us = point.cpu.get("server", 0.0) * seconds / max(1, wrk["received"]) * 1e6
    return {**asdict(point), "ok": point.ok, "server_us_per_request": round(server_us, 1)}


async def run(
    before_ref: str,
    plan: Plan,
    rounds: int,
    loads: list[str],
    clients_list: list[int],
    coalesce: str = "on",
) -> dict[str, Any]:
    started = time.time()
    results: dict[str, list[dict[str, Any]]] = {version: [] for version in VERSIONS}
    with postgres() as server, tempfile.TemporaryDirectory(prefix="reserve-ab-") as tmp:
        before_src = export_src(before_ref, Path(tmp) / "before")
        after = snapshot_src(Path(tmp) / "after")
        after_src = Path(tmp) / "after" / "src"
        # Everything this run starts (servers, `check`, client processes) imports the
        # snapshot, unless told otherwise: "before" servers are.
        os.environ["PYTHONPATH"] = str(after_src)
        paths = {"before": str(before_src), "after": str(after_src)}
        for version, path in paths.items():
            found = imported_from(path)
            if not found.startswith(path):
                raise SystemExit(f"{version} imports the service from {found}, not {path}")
        url = await create_migrated_database(server, DATABASE, replace=True)
        conn = await asyncpg.connect(url)
        try:
            settings = await postgres_settings(conn)
            migrations = await applied_migrations(conn)
            print(f"database {DATABASE}; PostgreSQL {settings['server_version']}", flush=True)
            print(f"migrations (this checkout): {', '.join(migrations)}", flush=True)
            print(f"before: {describe(before_ref)}", flush=True)
            changed = " + uncommitted src/ changes" if after["src_changed"] else ""
            print(f"after:  {after['commit']}{changed}", flush=True)
            if after["diff_stat"]:
                print("  " + after["diff_stat"].replace("\n", "\n  "), flush=True)
            bench = Bench(plan, url, conn, Path(tmp))
            repeat = 0
            for round_number in range(rounds):
                order = VERSIONS if round_number % 2 == 0 else VERSIONS[::-1]
                print(f"round {round_number + 1} of {rounds} ({order[0]} first)", flush=True)
                for load, clients, version in itertools.product(loads, clients_list, order):
                    repeat += 1
                    env = {**server_env(coalesce), "PYTHONPATH": paths[version]}
                    try:
                        point = await measure(bench, env, load, clients, repeat)
                    except Exception as error:  # record it, measure the rest
                        where = f"round {round_number + 1} {version} {load} {clients} clients"
                        bench.fail(f"{where}: {error!r}")
                        continue
                    point |= {"version": version, "round": round_number}
                    results[version].append(point)
                    print(f"  {progress(point)}", flush=True)
        finally:
            await conn.close()
    summary = summarize(results, loads, clients_list)
    return {
        "machine": machine(),
        "postgres": settings,
        "migrations": migrations,
        "before": {"ref": before_ref, "commit": describe(before_ref)},
        "after": after,
        "plan": asdict(plan),
        "rounds": rounds,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started),
        "points": results,
        "summary": summary,
        "verdicts_ok": all(p["ok"] for points in results.values() for p in points),
        "errors": bench.errors,
        "quiet_waited_s": round(bench.quiet_waited),
    }


def progress(p: dict[str, Any]) -> str:
    wrk = p["detail"]["wrk"]
    failed = [name for name, ok in p["verdicts"].items() if not ok]
    other = f"  {wrk['other']} not Reservation" if wrk["other"] else ""
    return (
        f"{p['version']:6} {p['load']:6} {p['clients']:3} clients: {p['rate']:6.0f} holds/s"
        f"  p50 {p['p50_ms']:6.1f} ms  p99 {p['p99_ms']:6.1f} ms"
        f"  server {p['server_us_per_request']:5.0f} us/req  "
        + ("ok" if p["ok"] else f"FAILED: {', '.join(failed)}")
        + other
        + f"  {disturbed(p['cpu'])}{cpu_text(p['cpu'])}"
    )


def summarize(
    results: dict[str, list[dict[str, Any]]], loads: list[str], clients_list: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for load in loads:
        for clients in clients_list:
            mine = {
                version: {
                    p["round"]: p for p in points if (p["load"], p["clients"]) == (load, clients)
                }
                for version, points in results.items()
            }
            paired = sorted(set(mine["before"]) & set(mine["after"]))
            row: dict[str, Any] = {"load": load, "clients": clients, "rounds": len(paired)}
            for key in METRICS:
                for version in VERSIONS:
                    values = [p[key] for p in mine[version].values()]
                    row[f"{version}_{key}"] = statistics.median(values) if values else None
                ratios = [
                    mine["after"][r][key] / mine["before"][r][key]
                    for r in paired
                    if mine["before"][r][key]
                ]
                row[f"ratios_{key}"] = [round(v, 3) for v in ratios]
                row[f"ratio_{key}"] = round(statistics.median(ratios), 3) if ratios else None
            points = [p for version in mine.values() for p in version.values()]
            row["other_answers"] = {
                version: sum(p["detail"]["wrk"]["other"] for p in mine[version].values())
                for version in VERSIONS
            }
            row["disturbed_points"] = sum(disturbed(p["cpu"]) == "!" for p in points)
            # Rounds in which neither side was marked "!": the pairs to trust on a busy box.
            row["clean_rounds"] = [
                r + 1
                for r in paired
                if disturbed(mine["before"][r]["cpu"]) == disturbed(mine["after"][r]["cpu"]) == " "
            ]
            clean = [
                mine["after"][r - 1]["rate"] / mine["before"][r - 1]["rate"]
                for r in row["clean_rounds"]
                if mine["before"][r - 1]["rate"]
            ]
            row["clean_ratios_rate"] = [round(v, 3) for v in clean]
            row["verdicts_ok"] = all(p["ok"] for p in points)
            ratio = row["ratio_rate"]
            row["within_10_percent"] = None if ratio is None else ratio >= ACCEPT
            rows.append(row)
    return rows


def print_points(result: dict[str, Any]) -> None:
    print("\npoints (! = other work on the machine during the point)")
    points = sorted(
        (p for version in result["points"].values() for p in version),
        key=lambda p: (p["round"], list(LOADS).index(p["load"]), p["clients"], p["version"]),
    )
    for p in points:
        print(f"  round {p['round'] + 1} {progress(p)}")


def print_stock(result: dict[str, Any]) -> None:
    print("\nverdicts: Reservations counted by wrk vs stock consumed (SQL), then `check`")
    for version, points in result["points"].items():
        for p in points:
            d = p["detail"]
            wrk = d["wrk"]
            errors = {k: v for k, v in wrk["errors"].items() if v}
            print(
                f"  round {p['round'] + 1} {version:6} {p['load']:6} {p['clients']:3}:"
                f" counted {d['counted']:7} consumed {d['consumed']:7}"
                f" (+{d['committed_unanswered']:3}; {d['unanswered_at_stop']:3} cut off)"
                f" other answers {wrk['other']}"
                + (f" wrk errors {errors}" if errors else "")
                + f"  check: {d['check']['summary']}"
                + ("" if p["ok"] else f"  FAILED {p['verdicts']}")
            )
            for sample in wrk["samples"]:
                print(f"      sample answer: {sample[:200]}")


def cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def print_summary(result: dict[str, Any]) -> None:
    print(f"\nbefore: {result['before']['commit']}")
    after = result["after"]
    changed = f" + uncommitted src/ (diff {after['diff_sha256']})" if after["src_changed"] else ""
    print(f"after:  {after['commit']}{changed}")
    print(
        f"coalesced (INVENTORY_COALESCE_RESERVATIONS=on), {result['plan']['seconds']} s a point,"
        f" {result['plan']['subscribers']} subscribers; median over {result['rounds']} rounds;"
        " ratio = median of per-round after/before"
    )
    for row in result["summary"]:
        verdict = {None: "n/a", True: "within 10%", False: "NOT within 10%"}
        print(
            f"\n{LOAD_TITLES[row['load']]}, {row['clients']} clients"
            f" ({row['rounds']} paired rounds; holds/s after/before >= {ACCEPT}:"
            f" {verdict[row['within_10_percent']]})"
        )
        print(f"  {'':17} {'before':>10} {'after':>10} {'after/before':>13}  per round")
        for key, (label, fmt) in METRICS.items():
            ratios = ", ".join(f"{r:.2f}" for r in row[f"ratios_{key}"])
            print(
                f"  {label:17} {cell(row[f'before_{key}'], fmt):>10}"
                f" {cell(row[f'after_{key}'], fmt):>10}"
                f" {cell(row[f'ratio_{key}'], '.2f'):>13}  {ratios}"
            )
        others = row["other_answers"]
        print(
            f"  answers not Reservation: before {others['before']}, after {others['after']};"
            f" verdicts {'ok' if row['verdicts_ok'] else 'FAILED'};"
            f" {row['disturbed_points']} points marked !"
        )
        clean = ", ".join(
            f"round {r} {v:.2f}"
            for r, v in zip(row["clean_rounds"], row["clean_ratios_rate"], strict=True)
        )
        print(f"  holds/s after/before in rounds with neither side marked !: {clean or 'none'}")
    marked = sum(row["disturbed_points"] for row in result["summary"])
    total = sum(len(points) for points in result["points"].values())
    print(
        f"\nother work on the machine: {marked} of {total} points marked !,"
        f" {result['quiet_waited_s']} s spent waiting for quiet; run took {result['duration_s']} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the earlier commit (any git ref)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="per point (default 8)")
    parser.add_argument(
        "--subscribers",
        type=int,
        default=100,
        help="WebSocket subscribers on each point's first product (default 100, as "
        "bench.flash_sale; 0: none)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds the whole run may spend waiting for other processes' CPU use to drop "
        "before a point (default 60)",
    )
    parser.add_argument(
        "--loads", nargs="+", choices=list(LOADS), default=list(LOADS), help="default: both"
    )
    parser.add_argument(
        "--clients", nargs="+", type=int, default=list(CLIENTS), help="default: 16 64"
    )
    parser.add_argument(
        "--per-request",
        action="store_true",
        help="measure the per-request path (INVENTORY_COALESCE_RESERVATIONS=off) instead",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    raise_open_files_limit()
    plan = Plan(
        seconds=args.seconds,
        warmup_seconds=2,
        ceiling_clients=(),
        service_clients=tuple(args.clients),
        live_off_clients=0,
        live_pairs=0,
        subscribers=args.subscribers,
        fanout_subscribers=(),
        fanout_changes=0,
        subscribers_per_process=1250,
        quiet_wait=args.quiet_wait,
    )
    result = uvloop.run(
        run(
            args.before,
            plan,
            args.rounds,
            args.loads,
            args.clients,
            "off" if args.per_request else "on",
        )
    )
    print_points(result)
    print_stock(result)
    print_summary(result)
    print(f"\nsaved {save('reserve_ab', result)}")
    for error in result["errors"]:
        print(f"ERROR {error}")
    if not result["verdicts_ok"] or result["errors"]:
        print("FAILED: a verdict failed or a point could not be measured")
        sys.exit(1)


if __name__ == "__main__":
    main()
