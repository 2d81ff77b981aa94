"""The multi-node path on a two-node Ray cluster on this machine.

Each node is a `ray start` of its own with one CPU (a core of its own, by `taskset`) and an
address of its own on the loopback range (127.0.0.2 for the head, 127.0.0.3 for the
second), which is what a cluster of two machines looks like to Ray.

vLLM's Ray executor (`DISTRIBUTED_EXECUTOR_BACKEND=ray`) does not run on vLLM's CPU build:
its platform has no Ray resource key, and the executor stops before it places a rank
(`ValueError: current platform cpu does not support ray.`). The first test pins that. The
closest real thing runs in the second: one service worker per node, each started by a Ray
actor pinned to its node, both serving one job of two shards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import text

from app.core.database import Database
from tests.conftest import ROOT, free_port
from tests.e2e import ray_worker_host
from tests.e2e.conftest import LOGS, Service
from tests.e2e.ray_worker_host import WorkerHost
from tests.e2e.test_service import wait_until_done
from tests.helpers import completion_line, jsonl, read_jsonl
from worker.engine import has_cuda

pytestmark = pytest.mark.engine
ray.cloudpickle.register_pickle_by_value(ray_worker_host)

NODE_IPS = ("127.0.0.2", "127.0.0.3")  # head, second node
RAY_START_SECONDS = 90
WORKERS_READY_SECONDS = 240
OBJECT_STORE_BYTES = 100 << 20  # Ray's minimum is 75 MiB; nothing large goes through it here


@dataclass
class RayCluster:
    address: str  # the head's GCS, what RAY_ADDRESS names
    temp_dir: Path
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)  # `ray start --block`, head first

    def start_node(self, cpu: int, ip: str, *args: str) -> None:
        """One node: `ray start --block` stays in the foreground and takes its node's processes
        down when it is terminated, so the cluster stops by these pids alone (`ray stop` would
        stop every Ray process on the machine, other people's too)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "RAY_"))}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        log = open(LOGS / f"ray-node-{cpu}.log", "wb")  # noqa: SIM115  (kept open for the child)
        command = [
            "taskset",
            "-c",
            str(cpu),
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            f"--node-ip-address={ip}",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            *args,
        ]
        self.nodes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))

    def stop(self) -> list[int]:
        """Stops the nodes; returns the pids of any of their processes still running after."""
        processes = []
        for node in self.nodes:
            with contextlib.suppress(psutil.NoSuchProcess):
                processes += psutil.Process(node.pid).children(recursive=True)
        for node in reversed(self.nodes):  # the second node, then the head
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
                try:
                    node.wait(30)
                except subprocess.TimeoutExpired:
                    node.kill()
                    node.wait()
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            process.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
        return [process.pid for process in alive]

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [node for node in ray.nodes() if node["Alive"]]


def _wait_for_port(ip: str, port: int, nodes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            if node.poll() is not None:
                raise RuntimeError(f"{node.args!r} exited with {node.returncode}; see {LOGS}")
        try:
            with socket.create_connection((ip, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"Ray's head not listening on {ip}:{port} after {timeout}s; see {LOGS}")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    LOGS.mkdir(parents=True, exist_ok=True)
    # Short and outside pytest's folders: Ray's socket paths live under it (108 bytes at most).
    cluster = RayCluster(address="", temp_dir=Path(tempfile.mkdtemp(prefix="llmbatch-ray-", dir="/tmp")))
    head_ip, second_ip = NODE_IPS
    port = free_port()
    cluster.address = f"{head_ip}:{port}"
    try:
        cluster.start_node(
            0,
            head_ip,
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={cluster.temp_dir}",
            "--include-dashboard=false",
        )
        _wait_for_port(head_ip, port, cluster.nodes, RAY_START_SECONDS)
        cluster.start_node(1, second_ip, f"--address={cluster.address}")
        # The test's own process is a Ray driver too: it places the actors below, whose class
        # goes to Ray's workers by value (they need not import the repo).
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        deadline = time.monotonic() + RAY_START_SECONDS
        while len(cluster.alive_nodes()) < 2:
            assert time.monotonic() < deadline, f"the second Ray node did not join; see {LOGS}"
            time.sleep(0.2)
        yield cluster
    finally:
        ray.shutdown()
        leftovers = cluster.stop()
        leftovers += [
            process.pid
            for process in psutil.process_iter(["cmdline"])
            if str(cluster.temp_dir) in " ".join(process.info["cmdline"] or [])
        ]
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        assert not leftovers, f"Ray processes left running: {leftovers}"


def test_vllm_ray_executor_is_refused_by_the_cpu_build(ray_cluster: RayCluster, service: Service) -> None:
    """What DISTRIBUTED_EXECUTOR_BACKEND=ray does on vLLM's CPU build, on a live cluster of
    two nodes: the engine core stops at once and the worker exits with vLLM's error."""
    if has_cuda():
        pytest.skip("the CPU build's answer; a CUDA build runs the Ray executor on GPU nodes")
    worker = service.start_worker(
        "ray-executor", TENSOR_PARALLEL_SIZE="2", DISTRIBUTED_EXECUTOR_BACKEND="ray", RAY_ADDRESS=ray_cluster.address
    )
    returncode = worker.wait(WORKERS_READY_SECONDS)
    log = (LOGS / f"{service.name}-ray-executor.log").read_text(errors="replace")
    assert returncode != 0
    assert "Connected to Ray cluster" in log  # it reached the cluster: the refusal is vLLM's, not Ray's
    assert "ValueError: current platform cpu does not support ray." in log


def test_one_worker_per_ray_node_serves_a_job_of_two_shards(ray_cluster: RayCluster, service: Service) -> None:
    service.env.update(SHARD_SIZE="32")
    service.start_api()
    nodes = {node["NodeID"]: node["NodeManagerAddress"] for node in ray_cluster.alive_nodes()}
    assert sorted(nodes.values()) == sorted(NODE_IPS)
    placed = sorted(nodes.items(), key=lambda item: item[1])  # the head's core 0 first
    host_class = ray.remote(num_cpus=1, max_restarts=0)(WorkerHost)
    hosts: list[Any] = [  # ActorHandle[WorkerHost]: its methods' .remote is not typed
        host_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        for node_id, _ in placed
    ]
    pids: list[int] = []
    started: list[psutil.Process] = []  # psutil knows a process by its start time too: no pid reuse
    try:
        assert ray.get([host.node.remote() for host in hosts], timeout=60) == placed
        for cpu, host in enumerate(hosts):
            env = {**service.env, "VLLM_CPU_OMP_THREADS_BIND": str(cpu)}  # the node's one core
            log = str(LOGS / f"{service.name}-node-{cpu}.log")
            pids.append(ray.get(host.start.remote([sys.executable, "-m", "worker"], env, str(ROOT), log)))
            started.append(psutil.Process(pids[-1]))
        deadline = time.monotonic() + WORKERS_READY_SECONDS
        while len(service.wait_for("/readyz").json()["workers"]) < 2:
            assert ray.get([host.returncode.remote() for host in hosts]) == [None, None], f"see {LOGS}"
            assert time.monotonic() < deadline, f"two workers not ready after {WORKERS_READY_SECONDS}s"
            time.sleep(0.5)

        rows = [completion_line(f"ray-{i:03d}", f"node record {i}", max_tokens=8) for i in range(64)]
        with service.client() as client:
            file_id = client.post(
                "/v1/files", files={"file": ("ray.jsonl", jsonl(rows))}, data={"purpose": "batch"}
            ).json()["id"]
            batch = client.post(
                "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/completions", "batch_size": 4}
            ).json()
            done = wait_until_done(client, batch["id"])
            output = read_jsonl(client.get(f"/v1/files/{done['output_file_id']}/content").content)
        assert ray.get([host.returncode.remote() for host in hosts]) == [None, None]
    finally:
        try:
            exits = ray.get([host.stop.remote(60) for host in hosts[: len(pids)]], timeout=120)
        finally:
            for process in started:  # whatever the actors could not stop (their workers' engines die with them)
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            for host in hosts:
                ray.kill(host)
    assert exits == [0, 0]

    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 64, "completed": 64, "failed": 0}
    assert done["throughput"]["tensor_parallel_size"] == 1
    assert done["throughput"]["workers"] == 2
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
    for line in output:
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "text_completion" and body["model"] == "demo-llama"
        assert isinstance(body["choices"][0]["text"], str)
        assert 1 <= body["usage"]["completion_tokens"] <= 8

    # Each shard was run by the worker on one node, and each node's worker ran one shard.
    db = Database(service.env["DATABASE_URL"])
    try:
        with db.session() as session:
            ran = session.execute(
                text(
                    "SELECT DISTINCT windows.shard_index, workers.pid FROM windows "
                    "JOIN workers ON workers.id = windows.worker_id WHERE windows.job_id = :job"
                ),
                {"job": batch["id"]},
            ).all()
    finally:
        db.dispose()
    by_shard = {shard: pid for shard, pid in ran}
    assert len(ran) == 2 and sorted(by_shard) == [0, 1]
    assert sorted(by_shard.values()) == sorted(pids)
