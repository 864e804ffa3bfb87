"""Typed results. They stay objects while a run measures, summarizes and prints; `save`
turns the top-level result into the JSON in bench-results/ (to_dict, same shape as ever).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import psutil

from bench.harness import RESULTS
from bench.harness.plan import Plan

# ---------------------------------------------------------------- pieces of a point


@dataclass(frozen=True)
class Quiet:
    """CPU use by processes not ours just before a point, and how long the bench waited."""

    other_cores_before: float
    waited_s: float


@dataclass(frozen=True)
class Check:
    """What `inventory-graphql check` said about the whole database."""

    ok: bool
    summary: str
    mismatches: list[str]


@dataclass(frozen=True)
class WrkResult:
    """The WRK_RESULT line of drivers/reserve.lua, and the answers it sampled."""

    reservations: int  # answers that were a Reservation
    other: int  # any other answer but BUSY
    sent: int
    received: int
    requests: int
    duration_us: int
    p50_us: int
    p99_us: int
    max_us: int
    errors: dict[str, int]  # wrk's socket errors: connect, read, write, status, timeout
    samples: list[str] = field(default_factory=list)
    buyers_reused: int = 0  # requests sent with a buyer token an earlier one had used
    busy: int = 0  # 503 BUSY answers (deadline passed or queue full; nothing held)


@dataclass(frozen=True)
class Buyers:
    """Who holds a point's products, once settled (database.buyers): for points that
    reserve as buyers, or a product with a purchase limit."""

    purchase_limit: int | None
    holds: int  # holds on the point's products
    buyers: int  # distinct buyers among them (anonymous holds not counted)
    anonymous_holds: int
    above_limit: int  # (buyer, product) pairs holding plus having bought above the limit


@dataclass(frozen=True)
class SubscribersRead:
    """A `subscribe` client process's result."""

    subscribers: int
    updates_read: int
    readers_failed: int


@dataclass(frozen=True)
class PgbenchDetail:
    tps: float
    processed: float
    failed: float
    consumed: int
    quiet: Quiet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AsyncpgDetail:
    reserved: int
    consumed: int
    pool: int
    quiet: Quiet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServiceDetail:
    """A service point's wrk run, subscribers and settled stock."""

    wrk: WrkResult
    subscribers: SubscribersRead | None  # None: no subscribers
    quiet: Quiet
    consumed: int  # stock consumed on the point's products, once settled
    counted: int  # Reservations wrk counted
    unanswered_at_stop: int  # requests wrk sent and never saw answered
    committed_unanswered: int  # consumed - counted
    held_by_reservations: int
    check: Check
    pair: int | None = None  # which live-updates on/off pair, for those points
    alongside: dict[str, Any] | None = None  # the result of a client process run beside
    buyers: Buyers | None = None  # points with buyer tokens or a purchase limit

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["subscribers"] = result["subscribers"] or {}
        for optional in ("pair", "alongside", "buyers"):
            if result[optional] is None:
                del result[optional]
        return result


D = TypeVar("D", PgbenchDetail, AsyncpgDetail, ServiceDetail)


@dataclass
class Point(Generic[D]):
    """One measurement: a series at a load and a client count."""

    series: str
    load: str
    clients: int
    rate: float  # reservations/s
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]  # cores used per process group (cpu.cpu_meter)
    detail: D
    verdicts: dict[str, bool] = field(default_factory=dict)  # service points only

    @property
    def ok(self) -> bool:
        return all(self.verdicts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "load": self.load,
            "clients": self.clients,
            "rate": self.rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "cpu": dict(self.cpu),
            "detail": self.detail.to_dict(),
            "verdicts": dict(self.verdicts),
            "ok": self.ok,
        }


AnyPoint = Point[PgbenchDetail] | Point[AsyncpgDetail] | Point[ServiceDetail]


@dataclass(frozen=True)
class FanoutResult:
    """Commit-to-delivery delays of one fan-out point."""

    subscribers: int
    processes: int
    changes: int
    deliveries: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    all_delivered_p50_ms: float
    # Per change, in order: when its last subscriber had it (a slow first change shows).
    all_delivered_ms: list[int]
    server_us_per_message: float
    cpu: dict[str, float]
    quiet: Quiet
    round: int | None = None  # fanout_ab's round

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        if self.round is None:
            del result["round"]
        return result


# ---------------------------------------------------------------- bench.flash_sale


@dataclass(frozen=True)
class Ceiling:
    """The ceiling phase: notifications the listener heard, `check` once put back."""

    notifications: int
    check: Check

    def to_dict(self) -> dict[str, Any]:
        return {"listener": {"notifications": self.notifications}, "check": asdict(self.check)}


@dataclass(frozen=True)
class Target:
    target: str
    value: float | None
    goal: str
    verdict: str  # PASS, MISS or n/a
    note: str


@dataclass(frozen=True)
class BeforeAfter:
    """service (coalesced) against service (per-request) at one load and client count."""

    load: str
    clients: int
    coalesced: float | None
    per_request: float | None
    ratio: float | None


@dataclass(frozen=True)
class CodeVersion:
    """Which service code was measured: the commit, and whether src/ had changes on top."""

    checkout_commit: str
    # Uncommitted changes in src/ were measured too; None: the service was imported
    # from elsewhere (PYTHONPATH), e.g. an exported commit.
    src_changed: bool | None
    imported_from: str


@dataclass
class FlashSaleResult:
    machine: dict[str, object]
    code: CodeVersion
    postgres: dict[str, str]
    plan: Plan
    serve_workers: int | None  # `serve --workers N`; None: no --workers, serve's default
    started_at: str
    duration_s: int
    points: list[AnyPoint]
    ceiling: Ceiling
    fanout: list[FanoutResult]
    before_after: list[BeforeAfter]
    targets: list[Target]
    errors: list[str]
    quiet_waited_s: int

    @property
    def verdicts_ok(self) -> bool:
        return all(p.ok for p in self.points) and self.ceiling.check.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "code": asdict(self.code),
            "postgres": self.postgres,
            "plan": asdict(self.plan),
            "serve_workers": self.serve_workers,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "points": [p.to_dict() for p in self.points],
            "ceiling": self.ceiling.to_dict(),
            "fanout": [f.to_dict() for f in self.fanout],
            "before_after": [asdict(row) for row in self.before_after],
            "targets": [asdict(t) for t in self.targets],
            "verdicts_ok": self.verdicts_ok,
            "errors": self.errors,
            "quiet_waited_s": self.quiet_waited_s,
        }


# ---------------------------------------------------------------- bench.reserve_ab


@dataclass(frozen=True)
class ABPoint:
    """A service point of one version in one round, with the server's CPU per request."""

    point: Point[ServiceDetail]
    server_us_per_request: float
    version: str
    round: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.point.to_dict(),
            "server_us_per_request": self.server_us_per_request,
            "version": self.version,
            "round": self.round,
        }


@dataclass(frozen=True)
class SrcSnapshot:
    """This checkout's src/ as measured: its commit and the diff against it."""

    commit: str
    src_changed: bool
    diff_stat: str
    diff_sha256: str
    untracked: list[str]
    diff: str


@dataclass(frozen=True)
class MetricSummary:
    before: float | None  # median over rounds
    after: float | None
    ratios: list[float]  # after/before per paired round
    ratio: float | None  # their median


@dataclass(frozen=True)
class ReserveRow:
    """One (load, clients) of bench.reserve_ab over all rounds."""

    load: str
    clients: int
    rounds: int  # paired rounds
    metrics: dict[str, MetricSummary]  # by ABPoint metric: rate, p50_ms, ...
    other_answers: dict[str, int]  # by version
    disturbed_points: int
    clean_rounds: list[int]  # 1-based rounds in which neither side was marked "!"
    clean_ratios_rate: list[float]
    verdicts_ok: bool
    within_10_percent: bool | None

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"load": self.load, "clients": self.clients}
        result["rounds"] = self.rounds
        for key, metric in self.metrics.items():
            result[f"before_{key}"] = metric.before
            result[f"after_{key}"] = metric.after
            result[f"ratios_{key}"] = metric.ratios
            result[f"ratio_{key}"] = metric.ratio
        return result | {
            "other_answers": self.other_answers,
            "disturbed_points": self.disturbed_points,
            "clean_rounds": self.clean_rounds,
            "clean_ratios_rate": self.clean_ratios_rate,
            "verdicts_ok": self.verdicts_ok,
            "within_10_percent": self.within_10_percent,
        }


@dataclass
class ReserveABResult:
    machine: dict[str, object]
    postgres: dict[str, str]
    migrations: list[str]
    before_ref: str
    before_commit: str
    after: SrcSnapshot
    plan: Plan
    rounds: int
    started_at: str
    duration_s: int
    points: dict[str, list[ABPoint]]  # by version
    summary: list[ReserveRow]
    errors: list[str]
    quiet_waited_s: int
    # With --webhook: what the receiver got next to the feed (bench.harness.webhooks).
    webhook: dict[str, Any] | None = None

    @property
    def verdicts_ok(self) -> bool:
        return all(p.point.ok for points in self.points.values() for p in points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "postgres": self.postgres,
            "migrations": self.migrations,
            "before": {"ref": self.before_ref, "commit": self.before_commit},
            "after": asdict(self.after),
            "plan": asdict(self.plan),
            "rounds": self.rounds,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "points": {v: [p.to_dict() for p in points] for v, points in self.points.items()},
            "summary": [row.to_dict() for row in self.summary],
            "verdicts_ok": self.verdicts_ok,
            "errors": self.errors,
            "quiet_waited_s": self.quiet_waited_s,
            "webhook": self.webhook,
        }


# ---------------------------------------------------------------- bench.limits_ab


@dataclass(frozen=True)
class LimitsRow:
    """One client count of bench.limits_ab over all rounds: each series against the
    unlimited point of the same round."""

    clients: int
    rates: dict[str, float | None]  # series -> median holds/s over rounds
    server_us: dict[str, float | None]  # series -> median server CPU per request
    ratios: dict[str, list[float]]  # series -> its holds/s / unlimited's, per paired round
    ratio: dict[str, float | None]  # series -> their median
    clean_ratios: dict[str, list[float]]  # only rounds with neither point marked "!"
    other_answers: dict[str, int]  # series -> answers that were not a Reservation
    disturbed_points: int
    verdicts_ok: bool
    meets_target: bool | None  # limited / unlimited >= the target (median of rounds)


@dataclass
class LimitsABResult:
    machine: dict[str, object]
    postgres: dict[str, str]
    migrations: list[str]
    code: SrcSnapshot
    plan: Plan
    rounds: int
    purchase_limit: int
    tokens_per_point: int
    minted_in_s: float
    started_at: str
    duration_s: int
    points: dict[str, list[ABPoint]]  # by series
    summary: list[LimitsRow]
    errors: list[str]
    quiet_waited_s: int

    @property
    def verdicts_ok(self) -> bool:
        return all(p.point.ok for points in self.points.values() for p in points)

    def to_dict(self) -> dict[str, Any]:
        code = asdict(self.code)
        return {
            "machine": self.machine,
            "postgres": self.postgres,
            "migrations": self.migrations,
            "code": code,
            "plan": asdict(self.plan),
            "rounds": self.rounds,
            "purchase_limit": self.purchase_limit,
            "tokens_per_point": self.tokens_per_point,
            "minted_in_s": self.minted_in_s,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "points": {s: [p.to_dict() for p in points] for s, points in self.points.items()},
            "summary": [asdict(row) for row in self.summary],
            "verdicts_ok": self.verdicts_ok,
            "errors": self.errors,
            "quiet_waited_s": self.quiet_waited_s,
        }


# ---------------------------------------------------------------- bench.fanout_ab


@dataclass(frozen=True)
class FanoutABRow:
    """One subscriber count of bench.fanout_ab: medians over rounds per version."""

    subscribers: int
    medians: dict[str, dict[str, float]]  # version -> metric -> median
    ratios: dict[str, float]  # metric -> before / after

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"subscribers": self.subscribers}
        for version, medians in self.medians.items():
            result |= {f"{version}_{key}": value for key, value in medians.items()}
        return result | {f"ratio_{key}": value for key, value in self.ratios.items()}


@dataclass
class FanoutABResult:
    machine: dict[str, object]
    before: str
    after: str
    started_at: str
    changes_per_point: int
    points: dict[str, list[FanoutResult]]  # by version
    summary: list[FanoutABRow]

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "before": self.before,
            "after": self.after,
            "started_at": self.started_at,
            "changes_per_point": self.changes_per_point,
            "points": {v: [p.to_dict() for p in points] for v, points in self.points.items()},
            "summary": [row.to_dict() for row in self.summary],
        }


# ---------------------------------------------------------------- saving


class Saved(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save(name: str, result: Saved) -> Path:
    """bench-results/NAME.json: the one place a result becomes a dict."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return path
