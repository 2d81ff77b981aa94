"""polling: many clients polling `GET /v1/batches/{id}` on the running API.

Paced: each client polls every `poll_interval` seconds (the CLI's `watch` polls once a
second), the load the goal is about. Saturated: the same clients with no pause, for
the API's capacity on this machine; there a closed loop of N clients makes latency
N / throughput, whatever the server does.

The clients are raw asyncio HTTP/1.1 keep-alive connections (`_Connection`), in the
harness's process on the same cores as the API and Postgres: httpx's asyncio client
spent most of a core of its own near 150 polls/s here while the API used a third of
one, so it measured itself. The batch's estimate (which loads a tokenizer in the API
process) is recorded before any figure is taken.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from typing import Any
from urllib.parse import urlsplit

from bench.api_process import RunningApi, running_api
from bench.common import BenchConfig, medians, percentile

SATURATED_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 30
LOAD_GENERATOR = "raw asyncio HTTP/1.1 keep-alive connections, in the harness's process"
ESTIMATE_WAIT_SECONDS = 120
ESTIMATE_POLL_SECONDS = 0.5


def make_batch(api: RunningApi) -> str:
    """A queued batch (no worker runs here) to poll, once its estimate is recorded."""
    rows = b"".join(json.dumps({"custom_id": f"r{i}", "prompt": "poll me"}).encode() + b"\n" for i in range(10))
    with api.client(timeout=REQUEST_TIMEOUT_SECONDS) as http:
        file = http.post("/v1/files", files={"file": ("poll.jsonl", io.BytesIO(rows))}, data={"purpose": "batch"})
        file.raise_for_status()
        body = {"input_file_id": file.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        batch = http.post("/v1/batches", json=body)
        batch.raise_for_status()
        batch_id = str(batch.json()["id"])
        deadline = time.monotonic() + ESTIMATE_WAIT_SECONDS
        while http.get(f"/v1/batches/{batch_id}").json().get("estimate") is None and time.monotonic() < deadline:
            time.sleep(ESTIMATE_POLL_SECONDS)
        return batch_id


class _Connection:
    """One keep-alive HTTP/1.1 connection that speaks just enough for a GET answered with
    a Content-Length: the load generator must cost far less than what it measures."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.server_ms: float | None = None  # the last answer's Server-Timing (the API's own time)

    async def get(self) -> int:
        """The status of one GET; a broken connection is closed, and the next GET reconnects."""
        self.server_ms = None
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(_content_length(head))
            self.server_ms = _server_ms(head)
            return int(head[9:12])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def _server_ms(head: bytes) -> float | None:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"server-timing:") and b"dur=" in line:
            return float(line.split(b"dur=", 1)[1].split(b";")[0].split(b",")[0])
    return None


def _content_length(head: bytes) -> int:
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    raise ValueError("an answer without Content-Length")


async def _poll(api: RunningApi, batch_id: str, clients: int, seconds: float, interval: float) -> dict[str, float]:
    latencies: list[float] = []
    timed: list[tuple[float, float, float | None]] = []  # (seconds into the run it was sent, its latency, server ms)
    server: list[float] = []  # the API's own milliseconds (Server-Timing)
    errors = 0
    deadline = time.perf_counter() + seconds
    url = urlsplit(api.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (
        f"GET /v1/batches/{batch_id} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {api.api_key}\r\n\r\n"
    ).encode()

    async def client(offset: float) -> None:
        nonlocal errors
        connection = _Connection(host, port, request)
        await asyncio.sleep(offset)  # spread the clients over one interval
        try:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    if await asyncio.wait_for(connection.get(), REQUEST_TIMEOUT_SECONDS) != 200:
                        errors += 1
                except (OSError, asyncio.IncompleteReadError, ValueError):  # OSError: TimeoutError too
                    errors += 1
                took = time.perf_counter() - began
                latencies.append(took)
                timed.append((began - started, took, connection.server_ms))
                if connection.server_ms is not None:
                    server.append(connection.server_ms)
                await asyncio.sleep(max(0.0, interval - took))
        finally:
            connection.close()

    rng = random.Random(0)
    started = time.perf_counter()
    await asyncio.gather(*(client(rng.uniform(0, interval)) for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "interval_seconds": interval,
        "requests": len(latencies),
        "requests_per_second": len(latencies) / wall,
        "latency_p50_ms": percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies, default=0.0) * 1000,
        # In the API (Server-Timing): what of the client's wait the server's own time was.
        "server_p99_ms": percentile(server, 0.99) if server else None,
        "server_max_ms": max(server, default=0.0) if server else None,
        # The slowest polls: [seconds into the polling, milliseconds, the API's own milliseconds].
        "slowest": [
            [round(at, 2), round(took * 1000, 1), ms] for at, took, ms in sorted(timed, key=lambda t: -t[1])[:10]
        ],
        "started_at": started,  # time.perf_counter() when the polling began
        "errors": errors,
    }


def run(config: BenchConfig) -> dict[str, Any]:
    with running_api(config, "polling") as api:
        batch_id = make_batch(api)
        asyncio.run(_poll(api, batch_id, config.poll_clients, 2.0, 0.0))  # warm-up: connections, caches
        paced, saturated = [], []
        for _ in range(config.runs):
            paced.append(
                asyncio.run(_poll(api, batch_id, config.poll_clients, config.poll_seconds, config.poll_interval))
            )
            saturated.append(asyncio.run(_poll(api, batch_id, config.poll_clients, SATURATED_SECONDS, 0.0)))
    return {
        "paced": medians(paced),
        "saturated": medians(saturated),
        "runs": {"paced": paced, "saturated": saturated},
        "load_generator": LOAD_GENERATOR,
    }
