"""CPU used per process group while a point runs, and waiting for a quiet machine.

Groups: the pids a point names (server, load generator, subscribers, listener), the bench
process itself, every `postgres` process, the webhook receiver, `serve`'s webhook delivery
process ("webhooks", apart from the server's other processes), "machine" (all cores busy)
and "other" (the machine less the groups: work that is not the benchmark's).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psutil

from bench.harness.results import Quiet

QUIET_CORES = 0.25  # CPU used by processes not ours, below which the machine counts as quiet
QUIET_WAIT_PER_POINT = 20.0


def _cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _named_groups() -> list[tuple[str, int]]:
    """Every `postgres` process, and the bench's webhook receiver (when one runs)."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "postgres":
            found.append(("postgres", p.pid))
        elif "bench.harness.webhook_receiver" in (p.info["cmdline"] or ()):
            found.append(("receiver", p.pid))
    return found


def _child_group(child: psutil.Process) -> str:
    """`serve`'s webhook delivery process is a group of its own: it runs niced, beside
    the server processes."""
    return "webhooks" if "deliver-webhooks" in child.cmdline() else "server"


@contextlib.asynccontextmanager
async def cpu_meter(pids: dict[str, int]) -> AsyncIterator[dict[str, float]]:
    """Cores used per process group while the block runs (sampled; a process that exits
    mid-block loses at most its last sampling interval). The dict is filled on exit."""
    usage: dict[str, float] = {}
    seen: dict[int, tuple[str, float, float]] = {}  # pid -> group, first, last
    ours = {"bench": os.getpid(), **pids}  # a later name for the same pid wins

    def sample() -> None:
        groups = [*ours.items(), *_named_groups()]
        if "server" in ours:  # `serve --workers N`: the workers are the server too
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(ours["server"]).children(recursive=True)
                for child in children:
                    with contextlib.suppress(psutil.Error):
                        groups.append((_child_group(child), child.pid))
        for group, pid in groups:
            used = _cpu_seconds(pid)
            if used is not None:
                seen[pid] = (group, seen.get(pid, (group, used, used))[1], used)

    async def keep_sampling() -> None:
        while True:
            await asyncio.sleep(0.25)
            sample()

    machine_before, started = psutil.cpu_times(), time.perf_counter()
    sample()
    sampler = asyncio.create_task(keep_sampling())
    try:
        yield usage
    finally:
        sampler.cancel()
        sample()
        elapsed = time.perf_counter() - started
        for group, first, last in seen.values():
            usage[group] = usage.get(group, 0.0) + (last - first) / elapsed
        usage["machine"] = _busy_seconds(machine_before, psutil.cpu_times()) / elapsed
        usage["other"] = usage["machine"] - sum(v for k, v in usage.items() if k != "machine")
        for group in usage:
            usage[group] = round(usage[group], 2)


def _busy_seconds(before: Any, after: Any) -> float:
    def busy(t: Any) -> float:
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    return busy(after) - busy(before)


@dataclass
class QuietBudget:
    """How long a whole run may wait for quiet (`total`), and has waited so far."""

    total: float
    waited: float = 0.0


async def wait_until_quiet(budget: QuietBudget, pids: dict[str, int] | None = None) -> Quiet:
    """Wait a bounded while for CPU use by processes not ours to stop: a test suite
    running beside the bench would skew the next point. The whole run waits at most
    budget.total seconds in all, one point at most QUIET_WAIT_PER_POINT."""
    started = time.monotonic()
    while True:
        async with cpu_meter(pids or {}) as cpu:
            await asyncio.sleep(1)
        waited = time.monotonic() - started
        left = budget.total - budget.waited - waited
        if cpu["other"] < QUIET_CORES or waited >= QUIET_WAIT_PER_POINT or left <= 0:
            budget.waited += max(0.0, waited - 1)  # the first second is the sample
            if waited > 1.5:
                print(f"  (waited {waited:.0f} s for other work to stop)", flush=True)
            return Quiet(other_cores_before=cpu["other"], waited_s=round(waited, 1))


def disturbed(cpu: dict[str, float]) -> str:
    """A mark for points during which processes not ours used real CPU."""
    return "!" if cpu.get("other", 0) >= 2 * QUIET_CORES else " "
