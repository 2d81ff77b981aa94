"""A worker's processes stay on the CPUs it was started on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# Runs in its own process: narrowing affinity is process-wide and must not touch the test run.
SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, threading
    from worker.affinity import restrict_to

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert restrict_to({0}) >= 3, "this thread, the helper thread and the child"
        assert os.sched_getaffinity(0) == {0}
        assert os.sched_getaffinity(helper.native_id) == {0}
        assert os.sched_getaffinity(child.pid) == {0}
        assert restrict_to({0}) == 0, "threads already inside are left alone"
    finally:
        stop.set()
        helper.join()
        child.kill()
    print("ok")
    """
)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_restrict_to_narrows_every_thread_and_child_process() -> None:
    run_alone(SCRIPT)


def run_alone(script: str) -> None:
    """Runs `script` in a Python process of its own; it must print "ok"."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# A stand-in for vLLM's compute process: named as vLLM names it, pinned to CPU 1.
OFF_COMPUTE_SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, threading
    from worker.affinity import keep_off_compute_cores

    compute = subprocess.Popen([sys.executable, "-c",
        "import os, setproctitle, time; setproctitle.setproctitle('VLLM::Worker'); "
        "os.sched_setaffinity(0, {1}); print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    assert compute.stdout.readline().strip() == "ready"
    scheduler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    try:
        assert keep_off_compute_cores() == {0}
        assert os.sched_getaffinity(0) == {0}
        assert os.sched_getaffinity(helper.native_id) == {0}
        assert os.sched_getaffinity(scheduler.pid) == {0}
        assert os.sched_getaffinity(compute.pid) == {1}, "the compute keeps its cores"
    finally:
        stop.set()
        helper.join()
        compute.kill()
        scheduler.kill()
    print("ok")
    """
)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
def test_the_workers_threads_move_off_the_cores_the_engine_computes_on() -> None:
    run_alone(OFF_COMPUTE_SCRIPT)


def test_nothing_moves_without_a_compute_process() -> None:
    run_alone(
        "from worker.affinity import keep_off_compute_cores\nassert keep_off_compute_cores() == set()\nprint('ok')"
    )
