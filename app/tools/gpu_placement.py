"""Which GPUs, and what share of their memory, each worker the launcher starts gets.

vLLM refuses to start an engine when the free memory of its GPU is under its
`gpu_memory_utilization` share of the whole. So two engines on one GPU must have shares that
add up to at most the one configured (`GPU_MEMORY_UTILIZATION`, 0.9), and workers that can
have GPUs of their own should: each generation worker gets `TENSOR_PARALLEL_SIZE` GPUs of
its own while there are enough; the embedding worker gets a spare GPU, else shares the last
generation worker's (whose share shrinks by the embedding's). When there are fewer GPUs
than generation workers need, they share the first `TENSOR_PARALLEL_SIZE` GPUs and split
the memory. Without GPUs nothing is placed (the CPU build sizes its own KV cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

COUNT_GPUS = "from vllm.platforms import current_platform as p; print(p.device_count() if p.is_cuda_alike() else 0)"


class PlacementError(ValueError):
    """The workers asked for cannot be placed on the GPUs there are."""


@dataclass(frozen=True)
class Placement:
    devices: tuple[int, ...]  # indexes into the GPUs this process sees
    memory_share: float  # the engine's gpu_memory_utilization

    def env(self, kind: str, visible: list[str] | None = None) -> dict[str, str]:
        """The worker's environment: CUDA_VISIBLE_DEVICES (mapped through the launcher's own,
        when it had one) and its memory share."""
        names = [visible[i] for i in self.devices] if visible else [str(i) for i in self.devices]
        share = "EMBEDDING_GPU_MEMORY_UTILIZATION" if kind == "embed" else "GPU_MEMORY_UTILIZATION"
        return {"CUDA_VISIBLE_DEVICES": ",".join(names), share: f"{self.memory_share:.4f}"}


def place(
    kinds: list[str], gpus: int, tensor_parallel_size: int, memory_share: float, embedding_share: float
) -> list[Placement | None]:
    """A placement per worker kind in `kinds` ("generate" or "embed"), None for each with no GPU."""
    if gpus <= 0:
        return [None] * len(kinds)
    generators = kinds.count("generate")
    if generators and tensor_parallel_size > gpus:
        raise PlacementError(
            f"TENSOR_PARALLEL_SIZE={tensor_parallel_size} needs {tensor_parallel_size} GPUs; this host has {gpus}"
        )
    embedding = "embed" in kinds
    own = generators * tensor_parallel_size <= gpus
    if own:
        groups = [tuple(range(i * tensor_parallel_size, (i + 1) * tensor_parallel_size)) for i in range(generators)]
    else:  # fewer GPUs than the workers need: they share the first group
        groups = [tuple(range(tensor_parallel_size))] * generators
    used = generators * tensor_parallel_size if own else tensor_parallel_size
    embed_alone = embedding and (used < gpus or not generators)
    embed_device = (used if generators else 0) if embed_alone else (groups[-1][-1] if groups else 0)
    shares = [memory_share / (1 if own else generators)] * generators
    if embedding and not embed_alone:  # the embedding engine shares a GPU: make room for its share
        if own:
            shares[-1] = memory_share - embedding_share
        else:
            shares = [(memory_share - embedding_share) / generators] * generators
    if any(share <= 0.05 for share in shares):
        raise PlacementError(
            f"{generators} generation worker(s) and an embedding worker on {gpus} GPU(s) leave each engine "
            f"{min(shares):.2f} of GPU memory; start fewer workers (--workers), or EMBEDDING_WORKER=false"
        )
    placements: list[Placement | None] = []
    generated = iter(zip(groups, shares, strict=True))
    for kind in kinds:
        if kind == "embed":
            placements.append(Placement((embed_device,), embedding_share))
        else:
            devices, share = next(generated)
            placements.append(Placement(devices, share))
    return placements


def visible_gpus() -> int:
    """GPUs vLLM's platform sees here (0 without CUDA or without vLLM), asked in a child
    process so the launcher never holds CUDA or vLLM itself."""
    try:
        done = subprocess.run([sys.executable, "-c", COUNT_GPUS], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    try:
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0
    except (ValueError, IndexError):
        return 0


def visible_devices() -> list[str] | None:
    """The launcher's own CUDA_VISIBLE_DEVICES, when set: a worker's devices are picked from it."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [part.strip() for part in value.split(",") if part.strip()] if value else None
