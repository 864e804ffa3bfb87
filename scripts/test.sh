#!/usr/bin/env bash
# Set up and run the tests against a real PostgreSQL (embedded unless TEST_DATABASE_URL
# is set). Arguments go to pytest.
source "$(dirname "$0")/_venv.sh" test
# The demo's browser tests drive Debian's Chromium (a browser download cannot work here).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/pytest "$@"
