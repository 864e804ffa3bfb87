"""The benchmarks' harness: the scripts in bench/ (flash_sale, fanout_ab, reserve_ab,
limits_ab, hostile) are thin orchestrations over these modules, and never import one another.

    plan.py           what to measure: Plan, the loads, the series, the server's settings
    database.py       the PostgreSQL server, seeded products, putting stock back, settling,
                      `inventory-graphql check`
    cpu.py            CPU used per process group during a point; waiting for a quiet machine
    drivers/          load generators: pgbench, wrk (+ its Lua script), a raw asyncpg loop
    clients.py        client processes (listener, subscribers, fan-out), started and read
    client_process.py their program (`python -m bench.harness.client_process MODE ...`)
    session.py        one run's state: plan, database, points recorded, errors
    points.py         one measurement point each: ceiling, service, fan-out
    results.py        typed results; dicts only when saved (bench-results/NAME.json)
    stats.py          percentiles
    summary.py        derived figures: targets, before/after, A/B medians and ratios
    report.py         printing and the chart
    versions.py       which code is measured: exported commits, the checkout's snapshot

The server under test is started with inventory_graphql.testing.server.ServerProcess (the
launcher the tests use), as `python -m inventory_graphql serve`: the version it runs is the
one on its PYTHONPATH, so an older commit without that module can still be measured.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
