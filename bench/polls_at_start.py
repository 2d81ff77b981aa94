"""polls_at_start: polls while the service starts and while it shares its engine (issue 26).

    python -m bench.polls_at_start [--runs 1] [--start-clients 100] [--share-clients 20]

`make run` itself at its defaults (the launcher, its embedded Postgres, the API, a generation
and an embedding worker, in a temporary VAR_DIR). Two phases per round:
- start: from the moment `/readyz` first says ready (checked every 0.2 s), `--start-clients`
  clients poll a batch once a second for 30 s (the embedding worker may still be loading);
- sharing: a big chat batch runs, then two 20-line batches (another owner's, a priority
  one) join it in the engine; `--share-clients` clients poll the big one once a second for 40 s.

Goals: start p99 < 100 ms; sharing p99 < 100 ms and max < 1 s; no errors.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.ceiling import DEMO, chat_row
from bench.common import LOGS, free_port, log_file, output_lengths, write_result
from bench.control_plane import Service, _start, _start_pollers, _stop

START_SECONDS, SHARE_SECONDS = 30.0, 40.0
BIG_LINES, SMALL_LINES, LONGEST, SEED = 6000, 20, 256, 5


def _batch(http: httpx.Client, rows: list[dict[str, Any]], **options: Any) -> str:
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    file = http.post("/v1/files", files={"file": ("load.jsonl", io.BytesIO(data))}, data={"purpose": "batch"})
    file.raise_for_status()
    body = {"input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = http.post("/v1/batches", json=body | options)
    batch.raise_for_status()
    return str(batch.json()["id"])


def _polled(service: Service, batch_id: str, clients: int, seconds: float) -> dict[str, Any]:
    poller = _start_pollers(service, batch_id, clients, seconds)
    out, _ = poller.communicate(timeout=seconds + 120)
    polls: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    polls.pop("started_at", None)
    return polls


def one_round(number: int, start_clients: int, share_clients: int) -> dict[str, Any]:
    lengths = output_lengths(BIG_LINES, LONGEST, SEED)
    big = [chat_row(i, DEMO.name, lengths[i]) for i in range(BIG_LINES)]
    with tempfile.TemporaryDirectory(prefix="bench-polls-at-start-") as tmp:
        launcher, service = _start(Path(tmp), free_port(), embedding_worker=True)
        ready = time.perf_counter()
        try:
            with httpx.Client(
                base_url=service.url, headers={"Authorization": f"Bearer {service.api_key}"}, timeout=120
            ) as http:
                first = _batch(http, big[:SMALL_LINES])
                start = _polled(service, first, start_clients, START_SECONDS - (time.perf_counter() - ready))
                big_id = _batch(http, big)
                time.sleep(5)
                _batch(http, big[:SMALL_LINES])
                _batch(http, big[:SMALL_LINES], priority=50)
                sharing = _polled(service, big_id, share_clients, SHARE_SECONDS)
                http.post(f"/v1/batches/{big_id}/cancel")
        finally:
            _stop(launcher)
            shutil.copy(Path(tmp) / "launcher.log", LOGS / f"polls-at-start-launcher-{number}.log")
    print(
        f"round {number}: start p99 {start['latency_p99_ms']:.0f} ms (max {start['latency_max_ms']:.0f}); "
        f"sharing p99 {sharing['latency_p99_ms']:.0f} ms (max {sharing['latency_max_ms']:.0f})",
        flush=True,
    )
    return {"start": start, "sharing": sharing}


def measure(runs: int, start_clients: int, share_clients: int) -> dict[str, Any]:
    rounds = [one_round(number, start_clients, share_clients) for number in range(runs)]

    def median(phase: str, key: str) -> float:
        return round(statistics.median(r[phase][key] for r in rounds), 1)

    return {
        "start_clients": start_clients,
        "share_clients": share_clients,
        "start_seconds": START_SECONDS,
        "share_seconds": SHARE_SECONDS,
        "rounds": rounds,
        "start_p99_ms": median("start", "latency_p99_ms"),
        "start_max_ms": max(r["start"]["latency_max_ms"] for r in rounds),
        "sharing_p99_ms": median("sharing", "latency_p99_ms"),
        "sharing_max_ms": max(r["sharing"]["latency_max_ms"] for r in rounds),
        "errors": sum(r[phase]["errors"] for r in rounds for phase in ("start", "sharing")),
    }


def run(config: Any) -> dict[str, Any]:
    """As `make bench` runs it."""
    return measure(config.runs, 100, 20)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.polls_at_start", description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--start-clients", type=int, default=100)
    parser.add_argument("--share-clients", type=int, default=20)
    args = parser.parse_args()
    write_result("polls_at_start", measure(args.runs, args.start_clients, args.share_clients))


if __name__ == "__main__":
    log_file("polls-at-start")  # the logs folder exists
    main()
