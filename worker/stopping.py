"""A worker told to stop (SIGTERM, SIGINT) is gone within a bound, whatever it is doing.

The first signal asks the loop to stop: static batches in the engine are aborted and their
shards handed back (strict mode finishes the one blocking call in flight), the engine is shut
down, and the process leaves. That path runs in Python and can hang where Python cannot help
it (a C call that never returns, an engine thread that never lets go): a worker that does not
stop holds its GPUs, and its supervisor (Kubernetes, the launcher, a Ray actor) waits on it.
So the first signal also arms the kernel's own alarm: `SIGALRM`, left at its default action,
ends the process `grace_seconds` later with no Python code run, and the orphan guard
(worker.orphan_guard) then takes the engine's processes down. A second signal leaves at once.
Every step of the stop is logged, so a slow one shows where it was.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger("worker")

DEFAULT_STOP_GRACE_SECONDS = 30.0  # Settings.stop_grace_seconds; Kubernetes' default grace is 30 s too


def install(stop_requested: threading.Event, grace_seconds: float) -> None:
    """SIGTERM and SIGINT stop the worker gracefully within `grace_seconds`, or at once when repeated."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the kernel ends the process: no handler to hang

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop_requested.is_set():
            log.warning("signal %d again: leaving now", signum)
            leave(128 + signum)
        # Set before anything else: a second signal may run its handler inside this one,
        # between any two of its steps, and must find the stop already asked for.
        stop_requested.set()
        signal.alarm(max(1, math.ceil(grace_seconds)))
        log.info(
            "signal %d: stopping (static batches in flight go back to the queue); "
            "the process ends in %.0f s at the latest",
            signum,
            grace_seconds,
        )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def leave(code: int) -> None:
    """Ends the process now: nothing is left to do but flush. The engine's threads can hang
    the interpreter's own exit (seen with vLLM's CPU build on a one-core Ray node)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
