"""rate_limits, a burst from one key against another key's polls: the API as a process, key
B polling `GET /v1/batches` ten times a second, first alone, then while key A sends as fast
as 8 threads can (past its rate, answered 429 by the gate before any work). Prints B's
latency both ways and A's answers; writes bench/results/rate_limits.json.

    python -m bench.rate_limits [--seconds 10] [--rate 600]

Uses DATABASE_URL if set, else an embedded Postgres under a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from app.core.database import Database
from app.core.migrations import upgrade
from app.data.keys import create_key
from app.data.records import Records
from bench.common import percentile, postgres

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(url: str, key: str, seconds: float) -> list[float]:
    """Key B: one poll every 0.1 s for `seconds`; each poll's seconds."""
    took = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.perf_counter()
            client.get("/v1/batches", params={"limit": 1}).raise_for_status()
            took.append(time.perf_counter() - began)
            time.sleep(max(0.0, 0.1 - took[-1]))
    return took


def burst(url: str, key: str, stop: threading.Event, answers: Counter[int]) -> None:
    """Key A: requests back to back until `stop`."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while not stop.is_set():
            answers[client.get("/v1/batches", params={"limit": 1}).status_code] += 1


def measure(url: str, keys: tuple[str, str], seconds: float) -> dict[str, Any]:
    quiet = poll(url, keys[1], seconds)
    stop, answers = threading.Event(), Counter[int]()
    threads = [threading.Thread(target=burst, args=(url, keys[0], stop, answers)) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        loaded = poll(url, keys[1], seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    def figures(took: list[float]) -> dict[str, float]:
        return {"p50_ms": round(percentile(took, 0.5) * 1000, 2), "p99_ms": round(percentile(took, 0.99) * 1000, 2)}

    return {
        "polls_alone": figures(quiet),
        "polls_beside_the_burst": figures(loaded),
        "burst_answers": {str(code): count for code, count in sorted(answers.items())},
        "burst_requests_per_second": round(sum(answers.values()) / seconds, 1),
    }


def run(config: Any) -> dict[str, Any]:
    """`make bench`'s scenario: this module as a child process."""
    from bench.common import child_env, log_file, read_result

    command = [sys.executable, "-m", "bench.rate_limits"]
    subprocess.run(command, env=child_env(), stdout=log_file("rate_limits"), stderr=subprocess.STDOUT, check=True)
    result = read_result("rate_limits")
    assert result is not None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=600, help="RATE_LIMIT_REQUESTS_PER_MINUTE for the run")
    args = parser.parse_args()
    with postgres(None) as url, tempfile.TemporaryDirectory() as tmp:
        upgrade(url)
        db = Database(url)
        keys = (create_key(Records(db), "burst")[1], create_key(Records(db), "poller")[1])
        db.dispose()
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "STORAGE_URL": f"file://{tmp}",
            "RATE_LIMIT_REQUESTS_PER_MINUTE": str(args.rate),
            "EMBEDDING_WORKER": "false",
        }
        command = [sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app", "--port", str(port)]
        api = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or api.poll() is not None:
                    raise RuntimeError("the API did not start")
                time.sleep(0.2)
            result = measure(base, keys, args.seconds) | {"settings": vars(args)}
        finally:
            api.terminate()
            api.wait(30)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rate_limits.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
