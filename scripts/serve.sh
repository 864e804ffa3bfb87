#!/usr/bin/env bash
# Set up and run the service. Without DATABASE_URL it starts an embedded PostgreSQL.
# Arguments go to `inventory-graphql serve`, e.g. --demo, --port 8000, --data-dir DIR.
source "$(dirname "$0")/_venv.sh" serve
exec .venv/bin/inventory-graphql serve "$@"
