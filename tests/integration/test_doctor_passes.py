"""`llm-batch doctor` on this host, as a user runs it: with the test Postgres (a migrated copy),
a storage folder and the demo models configured, every check passes (ok, or warn)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import DEMO_EMBEDDING_MODEL, DEMO_MODEL, ROOT

CHECKS = {"python", "torch", "vllm", "gpu", "compiler", "model", "embedding-model", "database", "storage"}


def test_doctor_passes_on_this_host(database_url: str, tmp_path: Path) -> None:
    assert (DEMO_MODEL / "config.json").is_file(), "the demo model is missing: run `make model`"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "STORAGE_URL": f"file://{tmp_path / 'storage'}",
        "MODEL": str(DEMO_MODEL),
        "EMBEDDING_MODEL": str(DEMO_EMBEDDING_MODEL),
        "EMBEDDING_WORKER": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.tools.cli", "doctor"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    statuses = {line.split()[1]: line.split()[0] for line in lines}
    assert set(statuses.values()) <= {"ok", "warn"}, done.stdout
    assert set(statuses) >= CHECKS, done.stdout
    assert statuses["database"] == "ok" and "migrations are at head" in done.stdout  # a migrated copy
    assert statuses["model"] == statuses["embedding-model"] == "ok"  # both tokenizers load
    assert not (tmp_path / "storage").exists()  # checked, not made
