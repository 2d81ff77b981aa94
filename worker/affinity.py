"""Keeps every process and thread of a worker inside the CPUs it was started on, and
off the cores the CPU engine computes on.

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
    return _narrow(_process_tree(), allowed)


def _process_tree() -> list[psutil.Process]:
    root = psutil.Process()
    return [root, *root.children(recursive=True)]


def _narrow(processes: list[psutil.Process], allowed: set[int]) -> int:
    """Moves every thread of `processes` not already inside `allowed` into it; returns how many."""
    changed = 0
    for process in processes:
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


COMPUTE_PROCESS = "VLLM::Worker"  # vLLM's compute process names itself so (TP ranks too)


def keep_off_compute_cores() -> set[int]:
    """On the CPU build, vLLM pins its compute processes' OpenMP threads to some cores
    and leaves the rest (reserved cores) for its scheduler, while this process and the
    scheduler float over all of them: the worker's own threads (the engine's front end,
    preparing, writing) then preempt the compute threads, and every forward pass waits
    for the slowest one. Moves every thread but the compute processes' onto the cores
    the compute does not use; returns those cores (empty: nothing was left to move to).
    Measured under `make run`'s shape on 2 cores: 1.09-1.30x the generate tokens/s.
    Workers sharing a host each start on CPUs of their own (`taskset`), so one worker's
    threads never land on another's compute cores."""
    compute: list[psutil.Process] = []
    others: list[psutil.Process] = []
    for process in _process_tree():
        try:
            (compute if process.name().startswith(COMPUTE_PROCESS) else others).append(process)
        except psutil.Error:
            continue
    compute_cores: set[int] = set()
    for process in compute:
        try:
            compute_cores |= set(os.sched_getaffinity(process.pid))
        except OSError:
            continue
    free = set(os.sched_getaffinity(0)) - compute_cores
    if not compute or not free:
        return set()
    _narrow(others, free)
    return free
