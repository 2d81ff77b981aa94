"""CPU priority per thread: work that can wait gives the CPU to work that cannot.

On a machine shared with an engine (the worker's own helper threads; the API beside a
worker under `make run`), a thread that prepares or writes in the background takes
only the CPU the engine's scheduler and compute leave. Linux keeps a nice value per
thread; elsewhere this changes nothing.
"""

from __future__ import annotations

import logging
import os
import threading

LOWEST = 19
log = logging.getLogger(__name__)


def lower_thread_priority(nice: int = LOWEST) -> None:
    """Sets the calling thread's nice value (higher is later in line for the CPU)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:
        log.debug("thread keeps its priority: %s", exc)


def thread_priority() -> int:
    """The calling thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
