#!/usr/bin/env bash
# Set up and run the tests against a real PostgreSQL (embedded unless TEST_DATABASE_URL
# is set). Arguments go to pytest.
source "$(dirname "$0")/_venv.sh" test
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/pytest "$@"
