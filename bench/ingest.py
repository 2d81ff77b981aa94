"""ingest: a generated JSONL file uploaded over HTTP (`POST /v1/files`, multipart,
purpose=batch) to the running API: MB/s from the first byte sent to the response (the
file is then validated and in storage), and the API process's peak RSS growth.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.api_process import RunningApi, running_api
from bench.common import BenchConfig, medians

RSS_SAMPLE_SECONDS = 0.02
UPLOAD_TIMEOUT_SECONDS = 3600
WARM_UP_BYTES = 1 << 20
MB = 1 << 20


def write_jsonl(path: Path, size: int) -> int:
    """Plain prompt lines of about 250 bytes up to `size` bytes; returns the line count."""
    filler = "lorem ipsum dolor sit amet " * 7
    lines, written = 0, 0
    with open(path, "w") as out:
        while written < size:
            chunk = "".join(
                json.dumps({"custom_id": f"r{lines + i}", "prompt": f"{lines + i} {filler}", "max_tokens": 16}) + "\n"
                for i in range(10_000)
            )
            out.write(chunk)
            lines += 10_000
            written += len(chunk)
    return lines


class PeakRss:
    """Samples a process's resident memory in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def upload(api: RunningApi, path: Path) -> dict[str, Any]:
    with api.client(timeout=UPLOAD_TIMEOUT_SECONDS) as http, open(path, "rb") as handle:
        baseline = psutil.Process(api.pid).memory_info().rss
        with PeakRss(api.pid) as rss:
            began = time.perf_counter()
            response = http.post("/v1/files", files={"file": (path.name, handle)}, data={"purpose": "batch"})
            seconds = time.perf_counter() - began
        response.raise_for_status()
        file = response.json()
        http.delete(f"/v1/files/{file['id']}").raise_for_status()  # frees the disk for the next run
    size = path.stat().st_size
    return {
        "bytes": size,
        "seconds": seconds,
        "mb_per_second": size / MB / seconds,
        "rss_baseline_mb": baseline / MB,
        "rss_growth_mb": (rss.peak - baseline) / MB,
    }


def run(config: BenchConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        source, warm_up = Path(tmp) / "ingest.jsonl", Path(tmp) / "warm-up.jsonl"
        lines = write_jsonl(source, config.ingest_bytes)
        write_jsonl(warm_up, WARM_UP_BYTES)
        with running_api(config, "ingest") as api:
            upload(api, warm_up)
            per_run = [upload(api, source) for _ in range(config.runs)]
    return {"bytes": per_run[0]["bytes"], "lines": lines, "median": medians(per_run), "runs": per_run}
