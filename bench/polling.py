"""Scenario 5: many clients polling `GET /v1/batches/{id}` on the running API.

Paced: each client polls every `poll_interval` seconds (the CLI's `watch` polls once a
second), the load the goal is about. Saturated: the same clients with no pause, for
the API's capacity on this machine; there a closed loop of N clients makes latency
N / throughput, whatever the server does.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from typing import Any

import httpx

from bench.api_process import RunningApi, running_api
from bench.common import BenchConfig, medians, percentile

SATURATED_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 30


def make_batch(api: RunningApi) -> str:
    """A queued batch (no worker runs here) to poll."""
    rows = b"".join(json.dumps({"custom_id": f"r{i}", "prompt": "poll me"}).encode() + b"\n" for i in range(10))
    with api.client(timeout=REQUEST_TIMEOUT_SECONDS) as http:
        file = http.post("/v1/files", files={"file": ("poll.jsonl", io.BytesIO(rows))}, data={"purpose": "batch"})
        file.raise_for_status()
        body = {"input_file_id": file.json()["id"], "endpoint": "/v1/completions", "completion_window": "24h"}
        batch = http.post("/v1/batches", json=body)
        batch.raise_for_status()
        return str(batch.json()["id"])


async def _poll(api: RunningApi, batch_id: str, clients: int, seconds: float, interval: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {api.api_key}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient, offset: float) -> None:
        nonlocal errors
        await asyncio.sleep(offset)  # spread the clients over one interval
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                response = await http.get(f"/v1/batches/{batch_id}")
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            took = time.perf_counter() - began
            latencies.append(took)
            await asyncio.sleep(max(0.0, interval - took))

    rng = random.Random(0)
    async with httpx.AsyncClient(
        base_url=api.url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_SECONDS
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, rng.uniform(0, interval)) for _ in range(clients)))
        wall = time.perf_counter() - started
    return {
        "clients": clients,
        "interval_seconds": interval,
        "requests": len(latencies),
        "requests_per_second": len(latencies) / wall,
        "latency_p50_ms": percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
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
    return {"paced": medians(paced), "saturated": medians(saturated), "runs": {"paced": paced, "saturated": saturated}}
