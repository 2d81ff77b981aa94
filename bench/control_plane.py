"""control_plane (issue 20): the control plane stays responsive while the engine works.

    python -m bench.control_plane [--runs 3] [--lines 8000] [--clients 20]

`make run` itself (the launcher, its embedded Postgres, the API and one worker as processes,
in a temporary VAR_DIR), on the same cores as the engine. Each round runs one job twice:
once with `--clients` clients polling it over HTTP once a second for `--poll-seconds`, and
once without them; both times a second file of the same size is uploaded and its batch
created five seconds in (then cancelled once the first job ends). Figures: the polls'
p50 / p99 / max latency and errors, the second upload's and creation's seconds, and the
first job's generation tokens/s with pollers against without (the rounds interleaved).

Goals: polls p99 < 100 ms, max < 1 s, no errors, batch creation < 1 s, and the job's
generation tokens/s at most 3 % lower with the pollers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.ceiling import DEMO, chat_row
from bench.common import LOGS, free_port, log_file, output_lengths, write_result
from bench.polling import _poll

LINES, LONGEST, SEED = 8000, 512, 11
CLIENTS, POLL_SECONDS, POLL_INTERVAL = 20, 40.0, 1.0
SECOND_FILE_AFTER_SECONDS = 5.0
READY_SECONDS, STOP_SECONDS = 600, 60


@dataclass
class Service:
    """A running `make run` (the launcher) and an admin key for it."""

    url: str
    api_key: str


def _start(var_dir: Path, port: int, embedding_worker: bool = False) -> tuple[subprocess.Popen[bytes], Service]:
    """`make run` in `var_dir`, returned as soon as /readyz first says ready."""
    env = {**os.environ, "VAR_DIR": str(var_dir), "PORT": str(port), "EMBEDDING_WORKER": str(embedding_worker).lower()}
    for name in ("DATABASE_URL", "STORAGE_URL", "MODEL"):
        env.pop(name, None)
    log_path = var_dir / "launcher.log"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "app.tools.launcher"],
        env=env,
        stdout=open(log_path, "wb"),  # noqa: SIM115 - the launcher's children write to it too
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert launcher.poll() is None, f"the launcher exited; see {log_path}"
        key = _admin_key(log_path.read_text(errors="replace"))
        if key:
            service = Service(f"http://127.0.0.1:{port}", key)
            try:
                if httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200:
                    return launcher, service
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    _stop(launcher)
    raise TimeoutError(f"the service did not become ready; see {log_path}")


def _admin_key(log: str) -> str | None:
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("No admin key existed"):
            keys = [candidate.strip() for candidate in lines[i + 1 : i + 4] if candidate.strip()]
            return keys[0] if keys else None
    return None


def _stop(launcher: subprocess.Popen[bytes]) -> None:
    """The launcher stops its children; whatever is left of its session is killed."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            launcher.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launcher.pid, signal.SIGKILL)


def _upload_and_create(http: httpx.Client, rows: list[dict[str, Any]]) -> tuple[str, float, float]:
    """The batch id, the upload's seconds and the creation's seconds."""
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    began = time.perf_counter()
    file = http.post("/v1/files", files={"file": ("load.jsonl", io.BytesIO(data))}, data={"purpose": "batch"})
    file.raise_for_status()
    uploaded = time.perf_counter()
    body = {"input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = http.post("/v1/batches", json=body)
    batch.raise_for_status()
    return str(batch.json()["id"]), uploaded - began, time.perf_counter() - uploaded


def _wait(http: httpx.Client, batch_id: str) -> dict[str, Any]:
    while True:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            assert batch["status"] == "completed", batch
            return batch
        time.sleep(POLL_INTERVAL)


def _start_pollers(service: Service, batch_id: str, clients: int, seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "bench.control_plane", "poll", service.url, service.api_key, batch_id,
               str(clients), str(seconds)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def _pollers_main(url: str, api_key: str, batch_id: str, clients: int, seconds: float) -> None:
    """In the pollers' process: polls, then prints the figures as one JSON line, its start on
    the clock both processes share (time.perf_counter is system-wide on Linux)."""
    print(json.dumps(asyncio.run(_poll(Service(url, api_key), batch_id, clients, seconds, POLL_INTERVAL))))


class StolenTime:
    """The hypervisor's stolen CPU time (/proc/stat `steal`, both cores) sampled while the
    pollers run: a stall every client sees at once, with the API idle, is the VM's."""

    PERIOD = 0.25

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []  # (perf_counter, steal ms in the period before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _steal_ms() -> float:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
        return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0

    def _run(self) -> None:
        last = self._steal_ms()
        while not self._stop.wait(self.PERIOD):
            now = self._steal_ms()
            self.samples.append((time.perf_counter(), now - last))
            last = now

    def __enter__(self) -> StolenTime:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self, began: float) -> dict[str, Any]:
        worst = sorted(self.samples, key=lambda s: -s[1])[:5]
        return {
            "steal_seconds": round(sum(ms for _, ms in self.samples) / 1000, 2),
            # The periods with the most stolen time: [seconds into the polling, ms stolen in PERIOD s].
            "steal_worst": [[round(t - began, 2), round(ms)] for t, ms in worst if ms > 0],
        }


def one_job(service: Service, rows: list[dict[str, Any]], clients: int, poll_seconds: float) -> dict[str, Any]:
    """The job run once, with `clients` pollers (none: 0) and the second creation."""
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {service.api_key}"}, timeout=120
    ) as http:
        warm_up, _, _ = _upload_and_create(http, rows[:64])
        _wait(http, warm_up)
        batch_id, _, _ = _upload_and_create(http, rows)
        polls: dict[str, Any] = {}
        poller = None
        with StolenTime() as stolen:
            if clients:  # in a process of its own: this one's uploads would hold the pollers' GIL
                poller = _start_pollers(service, batch_id, clients, poll_seconds)
            time.sleep(SECOND_FILE_AFTER_SECONDS)
            second_sent = time.perf_counter()
            second, upload_seconds, create_seconds = _upload_and_create(http, rows)
            done = _wait(http, batch_id)
            seen_done = time.perf_counter()
            http.post(f"/v1/batches/{second}/cancel").raise_for_status()
            if poller is not None:
                out, _ = poller.communicate(timeout=poll_seconds + 120)
                polls = json.loads(out.strip().splitlines()[-1])
    generation = done["throughput"]["generation_tokens_per_second"]
    job_seconds = done["throughput"]["generate_seconds"]
    if clients and job_seconds < poll_seconds:
        print(f"  the job ran {job_seconds:.0f} s, under the {poll_seconds:.0f} s of polling", flush=True)
    if polls:  # when, in the polling's seconds, the second file was sent and the job seen done
        began = polls.pop("started_at")
        polls["second_file_sent_at"] = round(second_sent - began, 2)
        polls["job_seen_completed_at"] = round(seen_done - began, 2)
        polls |= stolen.figures(began)
    return {
        "tokens_per_second": generation,
        "generate_seconds": job_seconds,
        "second_upload_seconds": round(upload_seconds, 3),
        "second_create_seconds": round(create_seconds, 3),
        "polls": polls,
    }


def measure(runs: int, lines: int, clients: int, poll_seconds: float) -> dict[str, Any]:
    lengths = output_lengths(lines, LONGEST, SEED)
    rows = [chat_row(i, DEMO.name, lengths[i]) for i in range(lines)]
    rounds = []
    for number in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-control-plane-") as tmp:
            launcher, service = _start(Path(tmp), free_port())
            try:
                # Interleaved, the order alternating, so drift over a round is not one side's.
                sides = ("polled", "quiet") if number % 2 == 0 else ("quiet", "polled")
                found = {
                    side: one_job(service, rows, clients if side == "polled" else 0, poll_seconds) for side in sides
                }
            finally:
                _stop(launcher)
                shutil.copy(Path(tmp) / "launcher.log", LOGS / f"control-plane-launcher-{number}.log")
        polls = found["polled"]["polls"]
        ratio = found["polled"]["tokens_per_second"] / found["quiet"]["tokens_per_second"]
        print(
            f"round {number}: polls p50 {polls['latency_p50_ms']:.0f} ms, p99 {polls['latency_p99_ms']:.0f} ms, "
            f"max {polls['latency_max_ms']:.0f} ms, {polls['errors']} errors; creation "
            f"{found['polled']['second_create_seconds']:.2f} s; job tokens/s polled/quiet {ratio:.3f}",
            flush=True,
        )
        rounds.append(found | {"polled_to_quiet": round(ratio, 4)})
    polled = [r["polled"] for r in rounds]

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return {
        "lines": lines,
        "longest_max_tokens": LONGEST,
        "clients": clients,
        "poll_seconds": poll_seconds,
        "rounds": rounds,
        "latency_p50_ms": median([p["polls"]["latency_p50_ms"] for p in polled]),
        "latency_p99_ms": median([p["polls"]["latency_p99_ms"] for p in polled]),
        "latency_max_ms": round(max(p["polls"]["latency_max_ms"] for p in polled), 1),
        "errors": sum(p["polls"]["errors"] for p in polled),
        "create_seconds_max": max(r[side]["second_create_seconds"] for r in rounds for side in ("polled", "quiet")),
        "upload_seconds_median": median([p["second_upload_seconds"] for p in polled]),
        "polled_to_quiet": median([r["polled_to_quiet"] for r in rounds]),
    }


def run(config: Any) -> dict[str, Any]:
    """As `make bench` runs it."""
    return measure(config.runs, LINES, CLIENTS, POLL_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=LINES)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--poll-seconds", type=float, default=POLL_SECONDS)
    args = parser.parse_args()
    write_result("control_plane", measure(args.runs, args.lines, args.clients, args.poll_seconds))


if __name__ == "__main__":
    if sys.argv[1:2] == ["poll"]:
        url, key, batch, clients, seconds = sys.argv[2:7]
        _pollers_main(url, key, batch, int(clients), float(seconds))
    else:
        log_file("control-plane")  # the logs folder exists
        main()
