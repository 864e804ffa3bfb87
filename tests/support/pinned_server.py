"""A server process on a port the test chose, so that a restart can reuse it (a page
reconnects to the address it was loaded from)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from inventory_graphql.testing.server import ServerProcess


class PinnedServer(ServerProcess):
    """The shared launcher, told to listen on `port` (the `--port` in `args` follows the
    launcher's own, and the last one given wins)."""

    def __init__(self, env: Mapping[str, str], port: int, log: Path | None = None) -> None:
        super().__init__(env, ["--port", str(port)], log)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
