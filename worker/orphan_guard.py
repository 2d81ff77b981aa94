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
import os, signal, sys
sys.stdin.buffer.read()  # returns at EOF: the worker is gone
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def guard_process_group() -> subprocess.Popen[bytes]:
    """Call once, before the engine starts its processes."""
    if os.getpgrp() != os.getpid():
        os.setpgid(0, 0)
    return subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(os.getpgrp())],
        stdin=subprocess.PIPE,
        start_new_session=True,  # outside the group it will kill
        close_fds=True,
    )
