"""A Ray actor that runs one service worker (`python -m worker`) on the node it is placed on
(tests/e2e/test_ray_cluster.py). Its own module, of the standard library and Ray alone: it is
sent to Ray's workers by value, so they import nothing of the repo to run it."""

from __future__ import annotations

import signal
import subprocess

import ray


class WorkerHost:
    """A Ray actor that runs one service worker (`python -m worker`) on the node it is placed on."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    def node(self) -> tuple[str, str]:
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def start(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> int:
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        return self.process.pid

    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def stop(self, timeout: float) -> int:
        """SIGTERM (the worker finishes its static batch), SIGKILL past the timeout."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()
