"""Client processes (bench.harness.client_process), so their CPU is not the benchmark's:
a LISTENer on the availability channel, WebSocket subscribers, fan-out subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.harness import ROOT


class Client:
    """A client process: `ready` when set up, `result` at the end."""

    def __init__(self, proc: asyncio.subprocess.Process, result_file: Path) -> None:
        self.proc = proc
        self.result_file = result_file

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, *args: str, ready_timeout: float = 300, niceness: int = 0) -> Client:
        handle, name = tempfile.mkstemp(prefix="bench-client-", suffix=".json")
        os.close(handle)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.harness.client_process",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "BENCH_RESULT_FILE": name},
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
        )
        client = cls(proc, Path(name))
        try:
            await client.expect("ready", ready_timeout)
        except BaseException:
            client.kill()
            raise
        return client

    async def expect(self, wanted: str, timeout: float) -> None:
        """Read the process's output until the line `wanted`."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"client process exited while waiting for {wanted!r}")
                if line.decode().strip() == wanted:
                    return

    async def finish(self, timeout: float = 120) -> dict[str, Any]:
        """Close its stdin (the signal to stop) and read its result (JSON)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        async with asyncio.timeout(timeout):
            while line := await self.proc.stdout.readline():
                if line.strip() == b"result":
                    await self.proc.wait()
                    result: dict[str, Any] = json.loads(self.result_file.read_text())
                    return result
        raise RuntimeError("client process exited without a result")

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        self.result_file.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def client(*args: str, niceness: int = 0) -> AsyncIterator[Client]:
    """A client process for the block (see client_process for the modes and arguments),
    at `niceness`."""
    started = await Client.start(*args, niceness=niceness)
    try:
        yield started
    finally:
        started.kill()
