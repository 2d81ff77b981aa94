"""How the worker's settings become `vllm.LLM(...)`'s arguments, and whether it runs on CUDA.

Every knob a real deployment sets reaches the engine here (MAX_NUM_SEQS,
MAX_NUM_BATCHED_TOKENS, KV_CACHE_DTYPE, QUANTIZATION, BLOCK_SIZE, KV_CACHE_MEMORY_BYTES),
and only when set: vLLM keeps its defaults otherwise.
"""

from __future__ import annotations

import functools
from typing import Any

from app.core.settings import Settings
from worker.adapters import lora_engine_kwargs

CPU_KV_CACHE_BYTES = 512 << 20  # without a GPU: plenty for the demo model, small beside RAM
CPU_EMBEDDING_KV_CACHE_BYTES = 64 << 20  # an encoder keeps no KV cache; a decoder-based embedder needs a little


@functools.cache
def has_cuda() -> bool:
    """Whether vLLM runs on CUDA (or ROCm) here, as vLLM's own platform detection says: not a
    guess from `nvidia-smi` on PATH or a CUDA_VISIBLE_DEVICES (a container without the
    driver's utilities has no nvidia-smi yet a GPU; CUDA_VISIBLE_DEVICES may be set with
    none). False where vLLM is not installed."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cuda_alike())


def generation_kwargs(settings: Settings, cuda: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": settings.model,
        "served_model_name": settings.model_name,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "pipeline_parallel_size": settings.pipeline_parallel_size,
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "enforce_eager": settings.enforce_eager if settings.enforce_eager is not None else not cuda,
    }
    if settings.distributed_executor_backend:
        kwargs["distributed_executor_backend"] = settings.distributed_executor_backend
    if settings.max_model_len:
        kwargs["max_model_len"] = settings.max_model_len
    kwargs.update(_engine_knobs(settings))
    if settings.kv_cache_memory_bytes or not cuda:
        kwargs["kv_cache_memory_bytes"] = settings.kv_cache_memory_bytes or CPU_KV_CACHE_BYTES
    kwargs["disable_log_stats"] = False  # per-request timings and preemptions, for app.jobs.telemetry
    # Lines that share a prefix (a system prompt, few-shot examples) compute it once.
    kwargs["enable_prefix_caching"] = settings.prefix_caching
    # A sharing worker hands vLLM each job's priority: a priority job's waiting requests are
    # scheduled before those already waiting (equal priorities stay first come, first served).
    kwargs["scheduling_policy"] = "priority"
    kwargs.update(lora_engine_kwargs(settings.lora_modules, settings.max_lora_rank, cuda))
    # Structured outputs through llguidance: its JSON strings are JSON's. xgrammar's grammar
    # for a string with a maxLength lets raw control characters through, which strict JSON
    # parsers refuse (a third of hot-sampled answers, tests/integration/test_sampling.py).
    # A per-request disable_any_whitespace is ignored by vLLM 0.32: it is the engine's.
    kwargs["structured_outputs_config"] = {"backend": "guidance", "disable_any_whitespace": settings.compact_json}
    return kwargs


def _engine_knobs(settings: Settings) -> dict[str, Any]:
    """The engine knobs a real deployment sets (MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS,
    KV_CACHE_DTYPE, QUANTIZATION, BLOCK_SIZE), only those set: vLLM keeps its defaults."""
    knobs: dict[str, Any] = {
        "max_num_seqs": settings.max_num_seqs,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "kv_cache_dtype": None if settings.kv_cache_dtype == "auto" else settings.kv_cache_dtype,
        "quantization": settings.quantization,
        "block_size": settings.block_size,
    }
    return {name: value for name, value in knobs.items() if value is not None}


def embedding_kwargs(settings: Settings, cuda: bool) -> dict[str, Any]:
    """An embedding model is small: one GPU (or CPU engine), a small share of memory, so it
    can sit beside the generation engine. With `dtype` auto and no CUDA it runs in float32:
    vLLM's auto picks float16 for pooling models, which the CPU build runs at half the speed."""
    kwargs: dict[str, Any] = {
        "model": settings.embedding_model,
        "served_model_name": settings.embedding_model_name,
        "runner": "pooling",
        "dtype": "float32" if settings.dtype == "auto" and not cuda else settings.dtype,
        "gpu_memory_utilization": settings.embedding_gpu_memory_utilization,
        "enforce_eager": settings.enforce_eager if settings.enforce_eager is not None else not cuda,
    }
    if settings.embedding_max_model_len:
        kwargs["max_model_len"] = settings.embedding_max_model_len
    if not cuda:
        kwargs["kv_cache_memory_bytes"] = CPU_EMBEDDING_KV_CACHE_BYTES
    return kwargs
