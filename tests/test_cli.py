"""The commands as a user runs them: serve on the embedded database, migrate, check."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import psutil
import pytest

from inventory_graphql.testing.server import ServerProcess


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inventory_graphql", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def postgres_running_in(data_dir: Path) -> bool:
    return any(
        p.info["name"] == "postgres" and str(data_dir) in " ".join(p.info["cmdline"] or [])
        for p in psutil.process_iter(["name", "cmdline"])
    )


def query(url: str, document: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": document}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_serve_on_embedded_postgres_keeps_data_and_stops_cleanly(tmp_path):
    env = {"DATABASE_URL": ""}  # no database given: the embedded one is used
    data_dir = tmp_path / "data"
    server = ServerProcess(env, ["--data-dir", str(data_dir), "--demo"], log=tmp_path / "log")
    try:
        server.wait_ready(timeout=60)
        products = query(server.url, "{ products { sku available } }")["data"]["products"]
        assert {"sku": "LAST-ONE", "available": 1} in products
        reserve = 'mutation { reserve(lines: [{sku: "LAST-ONE", quantity: 1}]) { __typename } }'
        assert query(server.url, reserve)["data"]["reserve"]["__typename"] == "Reservation"
        assert postgres_running_in(data_dir)
    finally:
        code = server.stop()  # SIGTERM
    assert code == 0, (tmp_path / "log").read_text()
    assert not postgres_running_in(data_dir), "the embedded PostgreSQL was left running"

    # Data survives a restart; check and migrate work on the same data directory.
    checked = run_cli("check", "--data-dir", str(data_dir), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "checked 8 products and 1 holds: ok" in checked.stdout
    migrated = run_cli("migrate", "--data-dir", str(data_dir), env=env)
    assert migrated.returncode == 0 and "schema is up to date" in migrated.stdout
    assert not postgres_running_in(data_dir)


async def test_check_exits_non_zero_on_a_mismatch(database_url, db, make_product):
    sku = await make_product(5)
    env = {"DATABASE_URL": database_url}
    assert (await asyncio.to_thread(run_cli, "check", env=env)).returncode == 0

    await db.execute("UPDATE product SET quantity = quantity + 1 WHERE sku = $1", sku)
    try:
        broken = await asyncio.to_thread(run_cli, "check", env=env)
    finally:
        await db.execute("UPDATE product SET quantity = quantity - 1 WHERE sku = $1", sku)

    assert broken.returncode == 1
    assert f"MISMATCH {sku}: quantity 6 (ledger 5)" in broken.stdout


def test_export_schema_prints_the_sdl():
    out = run_cli("export-schema", env={})
    assert out.returncode == 0 and "union ReserveResult" in out.stdout


def test_buyer_token_prints_a_token_the_server_accepts_for_that_buyer():
    from inventory_graphql.api.buyers import BuyerTokens

    secret = "cli-buyer-secret-" + "x" * 32
    out = run_cli(
        "buyer-token", "buyer-7", "--ttl", "120", env={"INVENTORY_BUYER_TOKEN_SECRET": secret}
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert out.stdout == token + "\n"  # one line, for $(inventory-graphql buyer-token ...)
    assert BuyerTokens(secret).verify(token) == "buyer-7"
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    assert 110 <= claims["exp"] - time.time() <= 120
    default = run_cli("buyer-token", "b", env={"INVENTORY_BUYER_TOKEN_SECRET": secret})
    claims = jwt.decode(default.stdout.strip(), secret, algorithms=["HS256"])
    assert 3590 <= claims["exp"] - time.time() <= 3600


def test_buyer_token_needs_the_secret():
    out = run_cli("buyer-token", "buyer-7", env={"INVENTORY_BUYER_TOKEN_SECRET": ""})
    assert out.returncode == 2 and out.stdout == ""
    assert "INVENTORY_BUYER_TOKEN_SECRET is not set" in out.stderr
    bad = run_cli("buyer-token", "", env={"INVENTORY_BUYER_TOKEN_SECRET": "s" * 32})
    assert bad.returncode == 2 and "1 to 255" in bad.stderr


def test_serve_runs_a_worker_per_core_by_default_and_takes_a_number() -> None:
    from inventory_graphql.cli import MAX_AUTO_WORKERS, _parser, workers

    cores = len(os.sched_getaffinity(0))
    assert workers("auto") == max(1, min(cores, MAX_AUTO_WORKERS))
    assert _parser().parse_args(["serve"]).workers == workers("auto")
    assert _parser().parse_args(["serve", "--workers", "3"]).workers == 3
    for bad in ("0", "-2", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            workers(bad)
