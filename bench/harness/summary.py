"""Figures derived from a run's points: bench.flash_sale's targets and before/after, and
the A/B scripts' medians over rounds and after/before ratios."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench.harness.cpu import disturbed
from bench.harness.plan import (
    ASYNCPG,
    ASYNCPG_FULL_POOL,
    LOADS,
    PGBENCH,
    SERVICE,
    SERVICE_LIVE_OFF,
    SERVICE_LIVE_ON,
    SERVICE_LIVE_ON_SHARED,
    Plan,
)
from bench.harness.results import (
    ABPoint,
    AnyPoint,
    BeforeAfter,
    FanoutABRow,
    FanoutResult,
    LimitsRow,
    MetricSummary,
    ReserveRow,
    ServiceDetail,
    Target,
)

# ---------------------------------------------------------------- bench.flash_sale


def find(points: list[AnyPoint], series: str, load: str, clients: int) -> AnyPoint | None:
    return next(
        (p for p in points if (p.series, p.load, p.clients) == (series, load, clients)), None
    )


def ratio(a: AnyPoint | None, b: AnyPoint | None) -> float | None:
    return a.rate / b.rate if a and b and b.rate else None


def live_pair_ratios(points: list[AnyPoint], on: str = SERVICE_LIVE_ON) -> list[float]:
    """`on` / off per pair of live-updates points (service_point's detail.pair)."""
    rates: dict[int, dict[str, float]] = {}
    for p in points:
        if p.series in (on, SERVICE_LIVE_OFF):
            assert isinstance(p.detail, ServiceDetail) and p.detail.pair is not None
            rates.setdefault(p.detail.pair, {})[p.series] = p.rate
    return [
        pair[on] / pair[SERVICE_LIVE_OFF]
        for _, pair in sorted(rates.items())
        if pair.get(SERVICE_LIVE_OFF) and on in pair
    ]


def targets(points: list[AnyPoint], fanout: list[FanoutResult], plan: Plan) -> list[Target]:
    coalesced = SERVICE["coalesced"]
    hot64 = find(points, coalesced, "hot", 64)
    low, high = min(plan.service_clients), max(plan.service_clients)
    hot_low, hot_high = find(points, coalesced, "hot", low), find(points, coalesced, "hot", high)
    vs_pgbench = ratio(hot64, find(points, PGBENCH, "hot", 64))
    spread64 = find(points, coalesced, "spread", 64)
    fan5k = next((f for f in fanout if f.subscribers == 5000), None)
    live_ratios = live_pair_ratios(points)
    shared_ratios = live_pair_ratios(points, SERVICE_LIVE_ON_SHARED)
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
            ratio(spread64, find(points, ASYNCPG, "spread", 64)),
            ">= 0.5",
            lambda v: v >= 0.5,
            "a pool of 8",
        ),
        (  # issue 17's: the strongest hand-written loop, a connection per client
            "10,000 products, 64 clients: service (coalesced) / raw asyncpg, pool 64",
            ratio(spread64, find(points, ASYNCPG_FULL_POOL, "spread", 64)),
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
            + ", ".join(f"{r:.2f}" for r in live_ratios)
            + (
                f"; subscribers not niced: {statistics.median(shared_ratios):.2f} ("
                + ", ".join(f"{r:.2f}" for r in shared_ratios)
                + ")"
                if shared_ratios
                else ""
            ),
        ),
        (
            "fan-out to 5,000 subscribers: p99 ms",
            fan5k.p99_ms if fan5k else None,
            "<= 500 ms",
            lambda v: v <= 500,
            "",
        ),
    ]
    return [
        Target(
            target=name,
            value=value,
            goal=goal,
            verdict="n/a" if value is None else ("PASS" if passes(value) else "MISS"),
            note=note,
        )
        for name, value, goal, passes, note in rows
    ]


def before_after(points: list[AnyPoint], plan: Plan) -> list[BeforeAfter]:
    rows = []
    for load in LOADS:
        for clients in plan.service_clients:
            after = find(points, SERVICE["coalesced"], load, clients)
            before = find(points, SERVICE["per-request"], load, clients)
            rows.append(
                BeforeAfter(
                    load=load,
                    clients=clients,
                    coalesced=after.rate if after else None,
                    per_request=before.rate if before else None,
                    ratio=ratio(after, before),
                )
            )
    return rows


# ---------------------------------------------------------------- bench.reserve_ab

VERSIONS = ("before", "after")
ACCEPT = 0.90  # after/before holds/s at least this: within 10% of before
METRICS = {  # ABPoint metric -> (label, format)
    "rate": ("holds/s", ".0f"),
    "p50_ms": ("p50 ms", ".1f"),
    "p99_ms": ("p99 ms", ".1f"),
    "server_us_per_request": ("server CPU us/req", ".0f"),
}


def metric(p: ABPoint, key: str) -> float:
    if key == "server_us_per_request":
        return p.server_us_per_request
    value: float = getattr(p.point, key)
    return value


def reserve_summary(
    results: dict[str, list[ABPoint]], loads: list[str], clients_list: list[int]
) -> list[ReserveRow]:
    rows = []
    for load in loads:
        for clients in clients_list:
            mine = {
                version: {
                    p.round: p for p in points if (p.point.load, p.point.clients) == (load, clients)
                }
                for version, points in results.items()
            }
            paired = sorted(set(mine["before"]) & set(mine["after"]))
            metrics: dict[str, MetricSummary] = {}
            for key in METRICS:
                medians: dict[str, float | None] = {}
                for version in VERSIONS:
                    values = [metric(p, key) for p in mine[version].values()]
                    medians[version] = statistics.median(values) if values else None
                ratios = [
                    metric(mine["after"][r], key) / metric(mine["before"][r], key)
                    for r in paired
                    if metric(mine["before"][r], key)
                ]
                metrics[key] = MetricSummary(
                    before=medians["before"],
                    after=medians["after"],
                    ratios=[round(v, 3) for v in ratios],
                    ratio=round(statistics.median(ratios), 3) if ratios else None,
                )
            points = [p for version in mine.values() for p in version.values()]
            # Rounds in which neither side was marked "!": the pairs to trust on a busy box.
            clean_rounds = [
                r + 1
                for r in paired
                if disturbed(mine["before"][r].point.cpu)
                == disturbed(mine["after"][r].point.cpu)
                == " "
            ]
            clean = [
                mine["after"][r - 1].point.rate / mine["before"][r - 1].point.rate
                for r in clean_rounds
                if mine["before"][r - 1].point.rate
            ]
            rate = metrics["rate"].ratio
            rows.append(
                ReserveRow(
                    load=load,
                    clients=clients,
                    rounds=len(paired),
                    metrics=metrics,
                    other_answers={
                        version: sum(p.point.detail.wrk.other for p in mine[version].values())
                        for version in VERSIONS
                    },
                    disturbed_points=sum(disturbed(p.point.cpu) == "!" for p in points),
                    clean_rounds=clean_rounds,
                    clean_ratios_rate=[round(v, 3) for v in clean],
                    verdicts_ok=all(p.point.ok for p in points),
                    within_10_percent=None if rate is None else rate >= ACCEPT,
                )
            )
    return rows


# ---------------------------------------------------------------- bench.limits_ab

BASELINE = "unlimited"  # bench.limits_ab's series every other is compared with
LIMITS_TARGET = 0.90  # the issue's: limited / unlimited holds/s at least this


def limits_summary(results: dict[str, list[ABPoint]], clients_list: list[int]) -> list[LimitsRow]:
    rows = []
    for clients in clients_list:
        mine = {
            series: {p.round: p for p in points if p.point.clients == clients}
            for series, points in results.items()
        }
        base = mine[BASELINE]
        ratios: dict[str, list[float]] = {}
        clean: dict[str, list[float]] = {}
        for series, points in mine.items():
            if series == BASELINE:
                continue
            paired = sorted(r for r in set(points) & set(base) if base[r].point.rate)
            ratios[series] = [round(points[r].point.rate / base[r].point.rate, 3) for r in paired]
            clean[series] = [
                round(points[r].point.rate / base[r].point.rate, 3)
                for r in paired
                if disturbed(points[r].point.cpu) == disturbed(base[r].point.cpu) == " "
            ]
        median = {s: round(statistics.median(v), 3) if v else None for s, v in ratios.items()}
        everything = [p for points in mine.values() for p in points.values()]
        limited = median.get("limited")
        rows.append(
            LimitsRow(
                clients=clients,
                rates={
                    s: statistics.median(p.point.rate for p in points.values()) if points else None
                    for s, points in mine.items()
                },
                server_us={
                    s: statistics.median(p.server_us_per_request for p in points.values())
                    if points
                    else None
                    for s, points in mine.items()
                },
                ratios=ratios,
                ratio=median,
                clean_ratios=clean,
                other_answers={
                    s: sum(p.point.detail.wrk.other for p in points.values())
                    for s, points in mine.items()
                },
                disturbed_points=sum(disturbed(p.point.cpu) == "!" for p in everything),
                verdicts_ok=all(p.point.ok for p in everything),
                meets_target=None if limited is None else limited >= LIMITS_TARGET,
            )
        )
    return rows


# ---------------------------------------------------------------- bench.fanout_ab

FANOUT_METRICS = ("p50_ms", "p99_ms", "server_us_per_message")


def fanout_summary(results: dict[str, list[FanoutResult]], sizes: list[int]) -> list[FanoutABRow]:
    rows = []
    for size in sizes:
        medians: dict[str, dict[str, float]] = {}
        for version, points in results.items():
            mine = [p for p in points if p.subscribers == size]
            medians[version] = {
                key: round(statistics.median(getattr(p, key) for p in mine), 1)
                for key in FANOUT_METRICS
            }
        ratios = {
            key: round(medians["before"][key] / medians["after"][key], 2) for key in FANOUT_METRICS
        }
        rows.append(FanoutABRow(size, medians, ratios))
    return rows
