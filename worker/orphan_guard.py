"""No orphaned engine processes: if the worker dies, even by SIGKILL, its engine
processes (vLLM's engine core and tensor-parallel workers, which hold GPU memory) die
with it.

The worker makes itself a process-group leader and starts a tiny watchdog process
holding the read end of a pipe. When the worker exits for any reason the kernel closes
the write end; the watchdog reads EOF and kills the worker's whole process group.
"""

from __future__ import annotations

import os
import subprocess
import sys

WATCHDOG = """
import os, signal, sys, time
leader = int(sys.argv[1])
sys.stdin.buffer.read()  # returns at EOF: the worker is exiting or gone

def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

deadline = time.monotonic() + float(sys.argv[2])
while running(leader) and time.monotonic() < deadline:  # a clean exit gets to finish
    time.sleep(0.1)
try:
    os.killpg(leader, signal.SIGKILL)  # whatever of the group is left: engine processes
except ProcessLookupError:
    pass
"""
EXIT_GRACE_SECONDS = 30
_watchdog: subprocess.Popen[bytes] | None = None  # held for the life of the process


def guard_process_group() -> subprocess.Popen[bytes]:
    """Call once, before the engine starts its processes."""
    global _watchdog
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)
    _watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpgrp()), str(EXIT_GRACE_SECONDS)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # outside the group it will kill
        close_fds=True,
    )
    return _watchdog
