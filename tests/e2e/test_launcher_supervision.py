"""`make run`'s launcher supervises the embedded default: an API killed mid-upload and a
killed embedded Postgres come back on their own, the killed upload's space is taken back,
work goes on exactly once, and when the launcher itself is SIGKILLed its children go with it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import DEMO_MODEL, ROOT, free_port
from tests.helpers import MIB, completion_line, jsonl, read_jsonl, start_slow_upload

START_SECONDS = 300
RECOVERY_SECONDS = 90
CHILDREN_GONE_SECONDS = 30


def wait_until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
            if found:
                return found
        except (httpx.TransportError, OSError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def temporary_bytes(var: Path) -> int:
    """Bytes of unfinished writes (dot-files) in the embedded default's local storage."""
    return sum(path.stat().st_size for path in (var / "storage").rglob(".*.tmp"))


def postmaster_pid(var: Path) -> int:
    return int((var / "postgres" / "postmaster.pid").read_text().split()[0])


def test_the_launcher_restarts_a_dead_api_and_postgres_and_takes_its_children_when_killed(tmp_path: Path) -> None:
    var, port = tmp_path / "var", free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "STORAGE_URL") and not k.startswith("VLLM_")
    }
    env.update(
        VAR_DIR=str(var),
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
        PORT=str(port),
        MODEL=str(DEMO_MODEL),
        MAX_MODEL_LEN="256",
        EMBEDDING_WORKER="false",
        POLL_SECONDS="0.5",
        LEASE_SECONDS="10",
        HEARTBEAT_SECONDS="2",
        SWEEP_SECONDS="0.5",
        TEMPORARY_OBJECT_MAX_AGE_SECONDS="4",
    )
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "app.tools.launcher"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        secret = wait_until(
            lambda: re.search(r"\b(lb-[\w-]+)", log_path.read_text(errors="replace")), START_SECONDS, "the admin key"
        ).group(1)
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        wait_until(lambda: http.get("/readyz").status_code == 200, START_SECONDS, "a ready worker")

        # The API, SIGKILLed mid-upload, is started again, and takes the upload's space back.
        upload, sent = start_slow_upload(base, secret, 400)
        wait_until(lambda: temporary_bytes(var) >= 20 * MIB, 60, "the upload in storage")
        [api] = [p for p in psutil.Process(launcher.pid).children() if "uvicorn" in " ".join(p.cmdline())]
        api.send_signal(signal.SIGKILL)
        upload.join(timeout=60)
        assert sent[0] < 400 * MIB and temporary_bytes(var) >= 20 * MIB  # killed mid-upload, its bytes left
        wait_until(lambda: http.get("/healthz").status_code == 200, RECOVERY_SECONDS, "the API back")
        assert launcher.poll() is None
        wait_until(lambda: temporary_bytes(var) == 0, RECOVERY_SECONDS, "the killed upload's space back")

        # The embedded Postgres, SIGKILLed mid-job, is started again; the job ends exactly once.
        rows = [completion_line(f"r{i}", f"item {i}", max_tokens=8) for i in range(300)]
        file_id = http.post("/v1/files", files={"file": ("in.jsonl", jsonl(rows))}, data={"purpose": "batch"}).json()[
            "id"
        ]
        body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h", "batch_size": 8}
        batch_id = http.post("/v1/batches", json=body).json()["id"]
        os.kill(postmaster_pid(var), signal.SIGKILL)
        during = http.get(f"/v1/batches/{batch_id}")
        assert during.status_code in (200, 503), during.text  # never a 500
        if during.status_code == 503:
            assert during.headers["retry-after"] and during.json()["error"]["code"] == "service_unavailable"
        done = wait_until(
            lambda: (b := http.get(f"/v1/batches/{batch_id}").json()).get("status") == "completed" and b,
            RECOVERY_SECONDS * 2,
            "the batch completed after the restart",
        )
        assert done["request_counts"] == {"total": 300, "completed": 300, "failed": 0}
        output = read_jsonl(http.get(f"/v1/files/{done['output_file_id']}/content").content)
        assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(300)]  # each once, in order
        assert "the embedded Postgres had stopped" in log_path.read_text(errors="replace")

        # The launcher, SIGKILLed: every process under it goes too.
        descendants = psutil.Process(launcher.pid).children(recursive=True)
        assert len(descendants) >= 3  # the API, the worker, its engine
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        _, alive = psutil.wait_procs(descendants, timeout=CHILDREN_GONE_SECONDS)
        assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for process in psutil.process_iter(["pid", "environ"]):
            try:
                if (process.info["environ"] or {}).get("VAR_DIR") == str(var):
                    process.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        with contextlib.suppress(OSError, ValueError):
            os.kill(postmaster_pid(var), signal.SIGKILL)  # the embedded server is not left behind
