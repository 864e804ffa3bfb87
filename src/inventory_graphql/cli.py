"""`inventory-graphql serve | migrate | check | deliver-webhooks | export-schema |
trusted-documents | buyer-token`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from inventory_graphql import garbage_collection, tracing
from inventory_graphql.config import ConfigError, Settings
from inventory_graphql.database import migrate
from inventory_graphql.demo import load_demo_catalog
from inventory_graphql.embedded_db import embedded_postgres
from inventory_graphql.inventory.reconcile import reconcile
from inventory_graphql.logs import configure_logging

log = logging.getLogger("inventory_graphql")
# How long SIGTERM waits for in-flight requests before closing what is left.
GRACE_SECONDS = 10
# One Python process serves at most one core, so one per core (README, Performance:
# "The default configuration"). Capped: each worker keeps its own pool and LISTEN
# connection, and PostgreSQL allows 100 connections by default.
MAX_AUTO_WORKERS = 8


def workers(value: str) -> int:
    """`--workers`: a positive number, or `auto`."""
    if value == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number of processes or auto, got {value!r}")
    return count


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """DATABASE_URL when given; otherwise the embedded PostgreSQL, stopped on exit."""
    if settings.database_url:
        yield settings.database_url
    else:
        with embedded_postgres(settings.data_dir) as url:
            yield url


async def _migrate(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    for migration in applied:
        print(f"applied {migration.version:03d}_{migration.name}")
    print("schema is up to date")
    return 0


async def _check(url: str, settings: Settings) -> int:
    conn = await asyncpg.connect(url)
    try:
        report = await reconcile(conn, settings.overdue_grace_seconds)
    finally:
        await conn.close()
    for problem in report.problems:
        print(f"MISMATCH {problem}")
    verdict = "ok" if report.ok else f"{len(report.problems)} problems"
    voided = f" ({report.voided} request ids voided after faults)" if report.voided else ""
    if report.above_lowered_limit:
        voided += f" ({report.above_lowered_limit} buyers above a limit lowered after they bought)"
    print(f"checked {report.products} products and {report.holds} holds{voided}: {verdict}")
    return 0 if report.ok else 1


def _serve(args: argparse.Namespace, settings: Settings, url: str) -> int:
    from inventory_graphql.http_protocol import http_protocol
    from inventory_graphql.webhooks.process import delivery_process

    if args.demo:
        asyncio.run(load_demo_catalog(url))
        # The page's buyer tokens come from the demo's route (demo.py), signed with the
        # configured secret or one made for this run. Workers inherit both.
        os.environ["INVENTORY_DEMO"] = "on"
        settings = dataclasses.replace(settings, demo=True)
        if settings.buyer_token_secret is None:
            secret = secrets.token_hex(32)
            os.environ["INVENTORY_BUYER_TOKEN_SECRET"] = secret
            settings = dataclasses.replace(settings, buyer_token_secret=secret)
    settings, generated = settings.with_admin_token()
    if generated is not None:
        # Tell only the operator starting the server. Workers inherit it through the
        # environment.
        os.environ["INVENTORY_ADMIN_TOKEN"] = generated
        print(f"Admin token (INVENTORY_ADMIN_TOKEN was not set): {generated}", flush=True)
    # uvicorn handles SIGTERM and Ctrl-C: it stops accepting, finishes in-flight requests
    # and runs the lifespan's shutdown. Then it re-raises the signal to the handler it
    # found; a no-op one lets us return, so `database()` stops the embedded PostgreSQL
    # and the process exits 0 instead of dying from the re-raised signal.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    # Header size and count, read timeouts, connection caps (http_protocol.py); the file
    # limit is raised here, before workers start, so they inherit it.
    http = http_protocol(settings)
    with contextlib.ExitStack() as stack:
        if settings.webhooks:
            # Webhooks go from a process of their own, niced (webhooks/process.py); the
            # server processes (they read this environment too) deliver none.
            stack.enter_context(delivery_process({"DATABASE_URL": url, "INVENTORY_WEBHOOKS": "on"}))
            os.environ["INVENTORY_WEBHOOKS"] = "off"
            settings = dataclasses.replace(settings, webhooks=False)
        _run_uvicorn(args, settings, url, http)
    return 0


def _run_uvicorn(
    args: argparse.Namespace, settings: Settings, url: str, http: type[asyncio.Protocol]
) -> None:
    import uvicorn

    from inventory_graphql.app import create_app

    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "log_config": None,
        "timeout_graceful_shutdown": GRACE_SECONDS,
        # uvicorn's default is 16 MiB: one such message froze the event loop for seconds.
        "ws_max_size": settings.max_ws_message_bytes,
        "ws_per_message_deflate": settings.ws_per_message_deflate,
        "http": http,
    }
    if args.workers == 1:
        # This process serves: once started, what startup built stays (frozen).
        traced = tracing.configure()  # before the schema is built: it adds the spans
        app = create_app(settings, url, on_started=garbage_collection.tune)
        try:
            uvicorn.run(app, **options)
        finally:
            if traced is not None:
                traced.shutdown()  # flushes the spans not sent yet
        return
    # Worker processes build their own app (pool, listener, sweeper, coalescer) from the
    # environment; this process keeps the embedded PostgreSQL, if any, for all of them.
    # Each sets up its own tracing first (tracing.py), when OTEL_* variables ask for it.
    os.environ["DATABASE_URL"] = url
    uvicorn.run(
        "inventory_graphql.tracing:app_from_env", factory=True, workers=args.workers, **options
    )


def _deliver_webhooks(args: argparse.Namespace, settings: Settings, url: str) -> int:
    from inventory_graphql.webhooks.process import deliver

    if not settings.webhooks:
        print("inventory-graphql: INVENTORY_WEBHOOKS is off: nothing to do", file=sys.stderr)
        return 2
    return asyncio.run(deliver(url, settings, args.parent))


def _export_schema(args: argparse.Namespace) -> int:
    from inventory_graphql.api.schema import schema

    sdl = schema.as_str() + "\n"
    if args.output == "-":
        sys.stdout.write(sdl)
    else:
        Path(args.output).write_text(sdl)
    return 0


def _trusted_documents(args: argparse.Namespace, settings: Settings) -> int:
    from inventory_graphql.api.trusted_manifest import (
        SourceError,
        build,
        changes,
        service_checks,
    )

    # The storefront demo's documents always: the service serves it at `/` itself.
    demo = [settings.demo_dir] if settings.demo_dir and settings.demo_dir.is_dir() else []
    try:
        manifest = build([*demo, *args.paths], service_checks())
    except SourceError as error:
        print(f"inventory-graphql: {error}", file=sys.stderr)
        return 2
    text = manifest.to_json()
    output = args.output or str(settings.trusted_documents_file)
    if args.check:
        path = Path(output)
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current == text:
            print(f"{output} is up to date ({len(manifest)} documents)")
            return 0
        print(f"{output} is stale; rebuild it without --check:", file=sys.stderr)
        for line in changes(current, manifest):
            print(f"  {line}", file=sys.stderr)
        return 1
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {len(manifest)} trusted documents to {output}")
    return 0


def _buyer_token(args: argparse.Namespace, settings: Settings) -> int:
    from inventory_graphql.api.buyers import BuyerTokens

    if settings.buyer_token_secret is None:
        print(
            "inventory-graphql: INVENTORY_BUYER_TOKEN_SECRET is not set: "
            "buyer tokens are signed with it (the server must have the same one)",
            file=sys.stderr,
        )
        return 2
    try:
        token = BuyerTokens(settings.buyer_token_secret).mint(args.buyer, args.ttl)
    except ValueError as error:
        print(f"inventory-graphql: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inventory-graphql", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def with_database(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        command.add_argument(
            "--data-dir",
            type=Path,
            help="embedded PostgreSQL data directory, when DATABASE_URL is not set "
            "(default: INVENTORY_DATA_DIR or a per-user data directory)",
        )
        return command

    serve = with_database("serve", "run the GraphQL service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--demo",
        action="store_true",
        help="load a demo catalog when empty; serve demo buyer tokens at /demo/buyer-token",
    )
    serve.add_argument(
        "--workers",
        type=workers,
        default="auto",
        help=f"server processes sharing the port: a number, or auto (the default: one per "
        f"core this process may use, at most {MAX_AUTO_WORKERS})",
    )
    serve.add_argument("--log-level", default="info")
    with_database("migrate", "apply database migrations")
    with_database("check", "reconcile stock with the ledger and the holds")
    deliver = with_database(
        "deliver-webhooks",
        "deliver webhooks only (serve runs this in a process of its own; more instances "
        "share the endpoints)",
    )
    deliver.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    export = commands.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument("--output", default="-")
    trusted = commands.add_parser(
        "trusted-documents",
        help="build the trusted-documents manifest from the demo and these clients' sources",
    )
    trusted.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="JavaScript/TypeScript (`/* GraphQL */` template literals) and .graphql files, "
        "or directories of them; the storefront demo is always included",
    )
    trusted.add_argument(
        "--output",
        help="where to write it, - for stdout (default: INVENTORY_TRUSTED_DOCUMENTS_FILE)",
    )
    trusted.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is not up to date"
    )
    buyer = commands.add_parser(
        "buyer-token",
        help="print a buyer token (a JWT signed with INVENTORY_BUYER_TOKEN_SECRET)",
    )
    buyer.add_argument("buyer", metavar="BUYER_ID", help="the buyer id (1-255 characters)")
    buyer.add_argument(
        "--ttl", type=int, default=3600, metavar="SECONDS", help="valid for (default 3600)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "export-schema":
        return _export_schema(args)
    try:
        settings = Settings.from_env()
        if args.command == "serve":
            # A manifest that cannot be used stops the server before anything starts.
            from inventory_graphql.api.trusted_manifest import load_trusted_documents

            load_trusted_documents(settings)
            tracing.requested(os.environ)  # an exporter it cannot use stops it here
    except (ConfigError, tracing.TracingError) as error:
        print(f"inventory-graphql: {error}", file=sys.stderr)
        return 2
    if args.command == "trusted-documents":
        return _trusted_documents(args, settings)
    if args.command == "buyer-token":
        return _buyer_token(args, settings)
    configure_logging(settings.log_format)
    if args.data_dir is not None:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    with database(settings) as url:
        if args.command == "migrate":
            return asyncio.run(_migrate(url))
        if args.command == "check":
            return asyncio.run(_check(url, settings))
        if args.command == "deliver-webhooks":
            return _deliver_webhooks(args, settings, url)
        return _serve(args, settings, url)
