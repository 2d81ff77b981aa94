"""A worker told to stop is gone within its grace, even when its stop hangs (worker.stopping).

Each case runs a process that installs the worker's stop handlers and then does what the
case needs: a loop that stops when asked, or one that never looks (a stop stuck in a call
that does not return, as a worker on a one-core Ray node once was)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROGRAM = """
import logging, sys, threading, time
from worker import stopping
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
stop = threading.Event()
stopping.install(stop, float(sys.argv[1]))
print("ready", flush=True)
if sys.argv[2] == "hangs":
    while True:  # never looks at `stop`
        time.sleep(0.05)
while not stop.wait(0.05):
    pass
print("stopped", flush=True)
stopping.leave(0)
"""


def _started(grace: float, behaviour: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(grace), behaviour], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _ended(process: subprocess.Popen[str]) -> int:
    try:
        return process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_worker_that_stops_when_asked_leaves_cleanly() -> None:
    process = _started(60, "stops")
    process.send_signal(signal.SIGTERM)
    assert _ended(process) == 0
    assert process.stdout is not None and process.stdout.read().splitlines()[-1] == "stopped"


def test_a_stop_that_hangs_is_ended_by_the_kernel_at_the_grace() -> None:
    process = _started(1, "hangs")
    process.send_signal(signal.SIGTERM)
    assert _ended(process) == -signal.SIGALRM


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_leaves_at_once(signum: int) -> None:
    process = _started(600, "hangs")
    process.send_signal(signum)
    assert process.stdout is not None and process.stdout.readline().startswith(f"signal {signum}: stopping")
    process.send_signal(signum)
    assert _ended(process) == 128 + signum
