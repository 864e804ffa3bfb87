"""What the benchmarks print, and bench.flash_sale's chart. Everything reads typed
results (results.py)."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any, Protocol

from bench.harness.cpu import disturbed
from bench.harness.plan import (
    ASYNCPG,
    ASYNCPG_FULL_POOL,
    LOAD_TITLES,
    LOADS,
    PGBENCH,
    PGBENCH_NOTIFY_OFF,
    SERVICE,
    SERVICE_LIVE_OFF,
)
from bench.harness.results import (
    ABPoint,
    AnyPoint,
    FanoutABResult,
    FanoutResult,
    FlashSaleResult,
    LimitsABResult,
    ReserveABResult,
    ServiceDetail,
)
from bench.harness.summary import ACCEPT, BASELINE, LIMITS_TARGET, METRICS


def describe(point: AnyPoint) -> str:
    """One line as a point is recorded."""
    verdict = "" if not point.verdicts else ("ok" if point.ok else "FAILED")
    return (
        f"{point.series:40} {point.load:6} {point.clients:5} "
        f"{point.rate:10.0f}/s  p50 {point.p50_ms:7.1f} ms  p99 {point.p99_ms:7.1f} ms  {verdict}"
    )


def cpu_text(cpu: dict[str, float]) -> str:
    first = ["server", "pgbench", "bench (asyncpg)", "wrk", "subscribers", "listener"]
    last = ["postgres", "bench", "other", "machine"]
    middle = sorted(k for k in cpu if k not in first + last)
    return " ".join(f"{k} {cpu[k]:.2f}" for k in first + middle + last if k in cpu)


# ---------------------------------------------------------------- bench.flash_sale


def print_points(points: list[AnyPoint]) -> None:
    header = f"{'series':40} {'load':6} {'clients':>7} {'res/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(header + "  verdict  CPU cores used (! = other work on the machine)")
    print("-" * (len(header) + 60))
    for p in points:
        verdict = "-" if not p.verdicts else ("ok" if p.ok else "FAILED")
        print(
            f"{p.series:40} {p.load:6} {p.clients:7} {p.rate:9.0f} "
            f"{p.p50_ms:8.1f} {p.p99_ms:8.1f}  {verdict:7} "
            f"{disturbed(p.cpu)}{cpu_text(p.cpu)}"
        )


def print_stock(points: list[AnyPoint], seconds: int) -> None:
    print("\nno oversell: Reservations counted by wrk vs stock consumed (SQL), then `check`")
    for p in points:
        if not p.verdicts:
            continue
        d = p.detail
        assert isinstance(d, ServiceDetail)
        failed = [name for name, ok in p.verdicts.items() if not ok]
        updates = d.subscribers.updates_read if d.subscribers else None
        read = "" if updates is None else f"subscribers read {updates / seconds:6.0f}/s  "
        print(
            f"  {p.series:40} {p.load:6} {p.clients:5}  counted {d.counted:7} "
            f"consumed {d.consumed:7} (+{d.committed_unanswered:4}; "
            f"{d.unanswered_at_stop:4} cut off)  {read}check: {d.check.summary}"
            + (f"  FAILED: {', '.join(failed)}" if failed else "")
        )
        if d.wrk.busy:
            print(f"      {d.wrk.busy} answers BUSY (503, retriable: nothing held)")
        if d.wrk.other:  # what they were: a refusal's words, a status, a timeout
            print(f"      {d.wrk.other} other answers, e.g.:")
            for sample in d.wrk.samples:
                print(f"      sample answer: {sample[:200]}")


def print_fanout_point(result: FanoutResult) -> None:
    print(
        f"  fan-out to {result.subscribers:,} subscribers ({result.processes} "
        f"processes): p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms",
        flush=True,
    )


def print_flash_sale(result: FlashSaleResult) -> None:
    print()
    print_points(result.points)
    print_stock(result.points, result.plan.seconds)
    print("\nbefore/after: service (coalesced) / service (per-request), reservations/s")
    for row in result.before_after:
        value = "n/a" if row.ratio is None else f"{row.ratio:.2f}"
        print(
            f"  {LOAD_TITLES[row.load]:16} {row.clients:5} clients: "
            f"{row.coalesced or 0:8.0f} / {row.per_request or 0:8.0f} = {value}"
        )
    print("\nfan-out: commit to delivery")
    for f in result.fanout:
        print(
            f"  {f.subscribers:6,} subscribers ({f.processes} client processes, "
            f"{f.changes} changes): p50 {f.p50_ms:.0f} ms, p99 {f.p99_ms:.0f} ms, "
            f"max {f.max_ms:.0f} ms; all delivered p50 {f.all_delivered_p50_ms:.0f} ms"
            f"\n  {disturbed(f.cpu)}CPU cores used: {cpu_text(f.cpu)}"
        )
    workers = result.serve_workers
    print(
        "\ntargets (the service: "
        + ("serve's default workers, one per core)" if workers is None else f"{workers} workers)")
    )
    for t in result.targets:
        value = "n/a" if t.value is None else f"{t.value:.2f}"
        print(f"  {t.verdict:5} {t.target:71} {value:>8}  (target {t.goal}) {t.note}")
    print(f"\nceiling products back in balance: {result.ceiling.check.summary}")
    marked = [p for p in result.points if disturbed(p.cpu) == "!"]
    print(
        f"other work on the machine: {len(marked)} of {len(result.points)} points marked !, "
        f"{result.quiet_waited_s} s spent waiting for quiet"
    )


CHART_STYLES: dict[str, dict[str, Any]] = {
    SERVICE["coalesced"]: {"color": "tab:blue", "marker": "o", "linewidth": 2.5},
    SERVICE["per-request"]: {"color": "tab:orange", "marker": "s", "linestyle": "--"},
    PGBENCH: {"color": "tab:green", "marker": "^"},
    ASYNCPG: {"color": "tab:purple", "marker": "v"},
    ASYNCPG_FULL_POOL: {"color": "tab:purple", "marker": "D", "linestyle": ":"},
    PGBENCH_NOTIFY_OFF: {"color": "tab:green", "marker": "^", "fillstyle": "none"},
    SERVICE_LIVE_OFF: {"color": "tab:blue", "marker": "o", "fillstyle": "none"},
}


def draw_chart(result: FlashSaleResult, path: Path) -> None:
    """Throughput against clients, one panel per load, log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    points = result.points
    clients = sorted({p.clients for p in points})
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharey=True)
    for ax, load in zip(axes, LOADS, strict=True):
        for series, style in CHART_STYLES.items():
            rates: dict[int, list[float]] = {}
            for p in points:
                if (p.series, p.load) == (series, load):
                    rates.setdefault(p.clients, []).append(p.rate)
            xy = sorted(  # repeated points (the live on/off pairs): their median
                (c, statistics.median(r) or math.nan)  # log scale: no point for zero
                for c, r in rates.items()
            )
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, label=series, markersize=8, **style)
        ax.set_xscale("log")
        ax.set_xticks(clients, [f"{c:,}" for c in clients])
        ax.minorticks_off()
        ax.set_title(LOAD_TITLES[load])
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3, which="both")
    # Log scale: the series span two orders of magnitude, and the targets are ratios.
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axes[0].set_ylabel("reservations / s (log scale)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    m = result.machine
    workers = result.serve_workers
    serve = "`serve` (default workers)" if workers is None else f"`serve --workers {workers}`"
    fig.suptitle(
        f"Flash sale: reservations/s against concurrent clients\n{m['cpus']} CPUs, "
        f"{result.plan.seconds} s per point, PostgreSQL "
        f"{result.postgres['server_version']}, the service as {serve}\nlive updates "
        "(NOTIFY trigger, 100 subscribers on the service) on unless marked off"
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- bench.reserve_ab


def ab_progress(p: ABPoint) -> str:
    point = p.point
    wrk = point.detail.wrk
    failed = [name for name, ok in point.verdicts.items() if not ok]
    other = f"  {wrk.other} not Reservation" if wrk.other else ""
    return (
        f"{p.version:6} {point.load:6} {point.clients:3} clients: {point.rate:6.0f} holds/s"
        f"  p50 {point.p50_ms:6.1f} ms  p99 {point.p99_ms:6.1f} ms"
        f"  server {p.server_us_per_request:5.0f} us/req  "
        + ("ok" if point.ok else f"FAILED: {', '.join(failed)}")
        + other
        + f"  {disturbed(point.cpu)}{cpu_text(point.cpu)}"
    )


def print_ab_points(result: ReserveABResult) -> None:
    print("\npoints (! = other work on the machine during the point)")
    points = sorted(
        (p for version in result.points.values() for p in version),
        key=lambda p: (p.round, list(LOADS).index(p.point.load), p.point.clients, p.version),
    )
    for p in points:
        print(f"  round {p.round + 1} {ab_progress(p)}")


def print_ab_stock(result: ReserveABResult) -> None:
    print("\nverdicts: Reservations counted by wrk vs stock consumed (SQL), then `check`")
    for version, points in result.points.items():
        for p in points:
            d = p.point.detail
            wrk = d.wrk
            errors = {k: v for k, v in wrk.errors.items() if v}
            print(
                f"  round {p.round + 1} {version:6} {p.point.load:6} {p.point.clients:3}:"
                f" counted {d.counted:7} consumed {d.consumed:7}"
                f" (+{d.committed_unanswered:3}; {d.unanswered_at_stop:3} cut off)"
                f" other answers {wrk.other}"
                + (f" wrk errors {errors}" if errors else "")
                + f"  check: {d.check.summary}"
                + ("" if p.point.ok else f"  FAILED {p.point.verdicts}")
            )
            for sample in wrk.samples:
                print(f"      sample answer: {sample[:200]}")


def cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def print_ab_summary(result: ReserveABResult) -> None:
    print(f"\nbefore: {result.before_commit}")
    after = result.after
    changed = f" + uncommitted src/ (diff {after.diff_sha256})" if after.src_changed else ""
    print(f"after:  {after.commit}{changed}")
    print(
        f"coalesced (INVENTORY_COALESCE_RESERVATIONS=on), {result.plan.seconds} s a point,"
        f" {result.plan.subscribers} subscribers; median over {result.rounds} rounds;"
        " ratio = median of per-round after/before"
    )
    for row in result.summary:
        verdict = {None: "n/a", True: "within 10%", False: "NOT within 10%"}
        print(
            f"\n{LOAD_TITLES[row.load]}, {row.clients} clients"
            f" ({row.rounds} paired rounds; holds/s after/before >= {ACCEPT}:"
            f" {verdict[row.within_10_percent]})"
        )
        print(f"  {'':17} {'before':>10} {'after':>10} {'after/before':>13}  per round")
        for key, (label, fmt) in METRICS.items():
            m = row.metrics[key]
            ratios = ", ".join(f"{r:.2f}" for r in m.ratios)
            print(
                f"  {label:17} {cell(m.before, fmt):>10}"
                f" {cell(m.after, fmt):>10}"
                f" {cell(m.ratio, '.2f'):>13}  {ratios}"
            )
        others = row.other_answers
        print(
            f"  answers not Reservation: before {others['before']}, after {others['after']};"
            f" verdicts {'ok' if row.verdicts_ok else 'FAILED'};"
            f" {row.disturbed_points} points marked !"
        )
        clean = ", ".join(
            f"round {r} {v:.2f}"
            for r, v in zip(row.clean_rounds, row.clean_ratios_rate, strict=True)
        )
        print(f"  holds/s after/before in rounds with neither side marked !: {clean or 'none'}")
    marked = sum(row.disturbed_points for row in result.summary)
    total = sum(len(points) for points in result.points.values())
    print(
        f"\nother work on the machine: {marked} of {total} points marked !,"
        f" {result.quiet_waited_s} s spent waiting for quiet; run took {result.duration_s} s"
    )


# ---------------------------------------------------------------- bench.limits_ab


def print_limits_ab(result: LimitsABResult) -> None:
    print("\npoints (! = other work on the machine during the point)")
    points = sorted(
        (p for series in result.points.values() for p in series),
        key=lambda p: (p.round, p.point.clients, p.version),
    )
    for p in points:
        print(f"  round {p.round + 1} {ab_progress(p)}")
    print("\nverdicts: Reservations counted by wrk vs stock consumed (SQL), buyers, `check`")
    for p in points:
        d = p.point.detail
        who = ""
        if d.buyers is not None:
            b = d.buyers
            who = (
                f" holds {b.holds} buyers {b.buyers} anonymous {b.anonymous_holds}"
                f" above limit {b.above_limit} tokens reused {d.wrk.buyers_reused}"
            )
        print(
            f"  round {p.round + 1} {p.version:9} {p.point.clients:3}: counted {d.counted:7}"
            f" consumed {d.consumed:7} (+{d.committed_unanswered}; {d.unanswered_at_stop} cut off)"
            f" other answers {d.wrk.other}{who}  check: {d.check.summary}"
            + ("" if p.point.ok else f"  FAILED {p.point.verdicts}")
        )
        for sample in d.wrk.samples:
            print(f"      sample answer: {sample[:200]}")
    code = result.code
    changed = f" + uncommitted src/ (diff {code.diff_sha256})" if code.src_changed else ""
    print(f"\ncode: {code.commit}{changed}")
    print(
        f"one hot product, coalesced, {result.plan.seconds} s a point,"
        f" {result.plan.subscribers} subscribers; limited: purchase limit"
        f" {result.purchase_limit} per buyer and a buyer token per request"
        f" ({result.tokens_per_point:,} minted per point, in {result.minted_in_s:.1f} s);"
        f" median over {result.rounds} rounds; ratio = median of per-round series/{BASELINE}"
    )
    for row in result.summary:
        verdict = {None: "n/a", True: "met", False: "NOT met"}[row.meets_target]
        print(f"\n{row.clients} clients (limited/{BASELINE} >= {LIMITS_TARGET}: {verdict})")
        print(f"  {'series':10} {'holds/s':>8} {'server us/req':>14} {'ratio':>6}  per round")
        for series, rate in row.rates.items():
            ratios = ", ".join(f"{r:.2f}" for r in row.ratios.get(series, []))
            print(
                f"  {series:10} {cell(rate, '.0f'):>8} {cell(row.server_us[series], '.0f'):>14}"
                f" {cell(row.ratio.get(series), '.2f'):>6}  {ratios}"
            )
        clean = "; ".join(
            f"{s} {', '.join(f'{r:.2f}' for r in v) or 'none'}" for s, v in row.clean_ratios.items()
        )
        print(
            f"  answers not Reservation: {row.other_answers};"
            f" verdicts {'ok' if row.verdicts_ok else 'FAILED'};"
            f" {row.disturbed_points} points marked !; ratios in clean rounds: {clean}"
        )
    print(f"\n{result.quiet_waited_s} s spent waiting for quiet; run took {result.duration_s} s")


# ---------------------------------------------------------------- bench.fanout_ab


def fanout_ab_progress(round_number: int, version: str, point: FanoutResult) -> str:
    return (
        f"  round {round_number + 1} {version:6} {point.subscribers:5,} subscribers:"
        f" p50 {point.p50_ms:5.0f} ms  p99 {point.p99_ms:5.0f} ms"
        f"  server {point.server_us_per_message:6.1f} us/message"
    )


def print_fanout_ab(result: FanoutABResult) -> None:
    print(f"\nbefore: {result.before}\nafter:  {result.after}")
    print("median over rounds; ratio = before / after (higher is better for after)")
    for row in result.summary:
        before, after, ratio = row.medians["before"], row.medians["after"], row.ratios
        print(
            f"  {row.subscribers:5,} subscribers:"
            f" p50 {before['p50_ms']:.0f} -> {after['p50_ms']:.0f} ms"
            f" ({ratio['p50_ms']:.2f}x),"
            f" p99 {before['p99_ms']:.0f} -> {after['p99_ms']:.0f} ms"
            f" ({ratio['p99_ms']:.2f}x),"
            f" server {before['server_us_per_message']:.0f} ->"
            f" {after['server_us_per_message']:.0f} us/message"
            f" ({ratio['server_us_per_message']:.2f}x)"
        )


class Verdicts(Protocol):
    errors: list[str]

    @property
    def verdicts_ok(self) -> bool: ...


def exit_unless_ok(result: Verdicts, failure: str) -> None:
    """Print the points that could not be measured; exit 1 if any, or if a verdict failed."""
    for error in result.errors:
        print(f"ERROR {error}")
    if not result.verdicts_ok or result.errors:
        print(f"FAILED: {failure}")
        sys.exit(1)
