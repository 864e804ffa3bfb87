#!/usr/bin/env bash
# Set up and run the tests against a real PostgreSQL (embedded unless TEST_DATABASE_URL
# is set). Arguments go to pytest.
source "$(dirname "$0")/_venv.sh" test
# The demo's browser tests drive Debian's Chromium (a browser download cannot work here);
# docker-compose only parses docker-compose.yml (no Docker engine is needed for that).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} for the tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
# The storefront demo's JS/CSS lint and format gate: Biome, pinned in scripts/demo-lint/package.json.
if command -v npm >/dev/null; then
    npm ci --prefix scripts/demo-lint --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null
    npm run --prefix scripts/demo-lint --silent check
elif [ "${INVENTORY_REQUIRE_BROWSER:-}" = 1 ]; then
    echo "npm not found, and INVENTORY_REQUIRE_BROWSER=1: the JS lint/format gate must run" >&2
    exit 1
else
    echo "npm not found: skipped the JS lint/format gate (scripts/demo-lint/package.json)" >&2
fi
.venv/bin/mypy  # strict on src, relaxed on tests and bench (pyproject.toml [tool.mypy])
# One process by default. INVENTORY_TEST_WORKERS=2 runs two pytest-xdist workers in about
# 0.6x the time on 2 cores, but two load tests (hostile input, half-open requests) then
# starve: in 1 of 3 runs each got a 503 BUSY or an empty answer.
.venv/bin/pytest -n "${INVENTORY_TEST_WORKERS:-0}" "$@"
