"""`inventory-graphql serve` in a subprocess, for tests and benchmarks: one launcher.

The server is started as `python -m inventory_graphql serve`, so the version it runs is the
one on the PYTHONPATH in `env` (the benchmarks' A/B comparisons run an older commit's source
this way, whether or not that commit has this module); this module needs only the standard
library.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """`inventory-graphql serve` in a subprocess, as an operator would start it.

    `env` is added to this process's environment (DATABASE_URL, settings, PYTHONPATH);
    `args` follow `serve --port N --log-level warning`, so they may override the log level.
    The server's output goes to `log` if given, else nowhere, or with `inherit_output=True`
    to this process's own stdout and stderr. The process starts in the constructor; as a
    context manager the server is also waited for until ready, and stopped on the way out.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        args: Sequence[str] = (),
        log: Path | None = None,
        *,
        inherit_output: bool = False,
        workers: int | None = 1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "inventory_graphql", "serve", "--port", str(self.port)]
        # One worker unless told otherwise (None: serve's default, one per core): a test
        # reads one process's metrics and state. args may override both.
        cmd += ["--log-level", "warning"]
        cmd += ["--workers", str(workers)] if workers is not None else []
        cmd += args
        with contextlib.ExitStack() as stack:
            stdout: IO[bytes] | int | None
            if log is not None:
                # The child holds its own descriptor; ours is closed once it has started.
                stdout = stack.enter_context(log.open("wb"))
            else:
                stdout = None if inherit_output else subprocess.DEVNULL
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                cmd,
                env={**os.environ, **env},
                stdout=stdout,
                stderr=None if stdout is None else subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll `/readyz` until it answers; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 20 s if it has not exited); the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
