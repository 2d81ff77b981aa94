"""Keeps every process and thread of a worker inside the CPUs it was started on.

vLLM's CPU backend (its OpenMP setup) widens the affinity of the worker's main and
engine-core processes to every CPU; a worker started with `taskset` or
`sched_setaffinity`, to share a host with other workers, would then spill onto their
cores. Only the compute process keeps its binding (`VLLM_CPU_OMP_THREADS_BIND`).
"""

from __future__ import annotations

import os

import psutil


def restrict_to(allowed: set[int]) -> int:
    """Narrows each thread of this process and its children to `allowed`; returns how
    many threads it changed. Threads already inside `allowed` are left alone."""
    changed = 0
    root = psutil.Process()
    for process in [root, *root.children(recursive=True)]:
        try:
            tids = [t.id for t in process.threads()]
        except psutil.Error:
            continue
        for tid in tids:
            try:
                if not os.sched_getaffinity(tid) <= allowed:
                    os.sched_setaffinity(tid, allowed)
                    changed += 1
            except OSError:  # the thread ended meanwhile
                continue
    return changed
