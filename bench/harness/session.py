"""One run's state: what every point needs (plan, database, an admin connection, a
scratch directory) and what it leaves (points recorded, errors, time spent waiting)."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.harness.cpu import QuietBudget
from bench.harness.plan import Plan
from bench.harness.report import describe
from bench.harness.results import AnyPoint


@dataclass
class Bench:
    plan: Plan
    url: str
    conn: asyncpg.Connection
    workdir: Path
    points: list[AnyPoint] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    quiet: QuietBudget = field(init=False)  # against plan.quiet_wait

    def __post_init__(self) -> None:
        self.quiet = QuietBudget(self.plan.quiet_wait)

    @property
    def quiet_waited(self) -> float:
        """Seconds spent in cpu.wait_until_quiet so far."""
        return self.quiet.waited

    def record(self, point: AnyPoint) -> AnyPoint:
        self.points.append(point)
        print(f"  {describe(point)}", flush=True)
        return point

    def fail(self, error: str) -> None:
        self.errors.append(error)
        print(f"  ERROR {error}", flush=True)


def raise_open_files_limit() -> None:
    """Up to the hard limit, for this process and the ones it starts (wrk, clients)."""
    # 1,024 HTTP connections and 5,000 WebSockets need more descriptors than the default.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
