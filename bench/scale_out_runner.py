"""Scenario 7: the existing scale-out benchmarks as child processes (each starts its own
engines): the machine's ceiling (`bench.machine_scaling`, raw engines pinned one per
core) and the service's scale-out (`bench.scale_out`, one worker against two).

Both pin engines to CPU cores and use the demo model, so they run only on the CPU
engine with the demo model; elsewhere the scenario records why it was skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import BenchConfig, child_env, fresh_database, log_file, read_result
from worker.engine import has_cuda

MIN_CORES = 2


def _skip_reason(config: BenchConfig) -> str | None:
    from app.tools.demo_model import DEFAULT_OUTPUT

    if has_cuda():
        return "pins engines to CPU cores; not meaningful on a GPU machine"
    if Path(config.model).resolve() != DEFAULT_OUTPUT.resolve():
        return "runs on the demo model only"
    if (os.cpu_count() or 1) < MIN_CORES:
        return "needs two cores"
    return None


def _run(module: str, args: list[str], env: dict[str, str]) -> None:
    command = [sys.executable, "-m", f"bench.{module}", *args]
    subprocess.run(command, env=env, stdout=log_file(module), stderr=subprocess.STDOUT, check=True)


def run(config: BenchConfig) -> dict[str, Any]:
    reason = _skip_reason(config)
    if reason:
        return {"skipped": reason}
    _run("machine_scaling", [], child_env())
    with fresh_database(config.database_url, "bench_scale_out") as url:
        _run("scale_out", ["--lines", str(config.scale_out_lines)], child_env(DATABASE_URL=url))
    return {"machine_scaling": read_result("machine_scaling"), "scale_out": read_result("scale_out")}
