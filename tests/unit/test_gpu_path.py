"""The GPU path, checked where a CPU machine can check it: each worker its GPUs or its share
of one (app.tools.gpu_placement), GPU detection by vLLM's platform, the engine knobs reaching
`LLM(...)`'s arguments, the CPU-only plugin standing aside elsewhere, and the worker image
able to compile kernels."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.settings import Settings
from app.tools.gpu_placement import Placement, PlacementError, place
from tests.conftest import ROOT
from worker.engine_args import generation_kwargs, has_cuda

MEMORY, EMBEDDING = 0.9, 0.1


def test_one_gpu_holds_the_generation_and_the_embedding_engine_within_the_configured_share() -> None:
    generate, embed = place(["generate", "embed"], 1, 1, MEMORY, EMBEDDING)
    assert generate == Placement((0,), pytest.approx(0.8)) and embed == Placement((0,), EMBEDDING)
    assert generate is not None and embed is not None
    assert generate.memory_share + embed.memory_share <= MEMORY + 1e-9


def test_two_workers_on_one_gpu_split_its_memory() -> None:
    placements = place(["generate", "generate", "embed"], 1, 1, MEMORY, EMBEDDING)
    assert [p.devices for p in placements if p] == [(0,), (0,), (0,)]
    assert sum(p.memory_share for p in placements if p) == pytest.approx(MEMORY)


def test_workers_get_gpus_of_their_own_when_there_are_enough() -> None:
    first, second, embed = place(["generate", "generate", "embed"], 8, 2, MEMORY, EMBEDDING)
    assert first == Placement((0, 1), MEMORY) and second == Placement((2, 3), MEMORY)
    assert embed == Placement((4,), EMBEDDING)  # a spare GPU: nobody's share shrinks


def test_the_embedding_engine_shares_the_last_workers_gpu_when_none_is_spare() -> None:
    generate, embed = place(["generate", "embed"], 2, 2, MEMORY, EMBEDDING)
    assert generate == Placement((0, 1), pytest.approx(0.8)) and embed == Placement((1,), EMBEDDING)


def test_a_worker_asking_for_more_gpus_than_the_host_has_is_refused_with_the_numbers() -> None:
    with pytest.raises(PlacementError, match="TENSOR_PARALLEL_SIZE=2 needs 2 GPUs; this host has 1"):
        place(["generate"], 1, 2, MEMORY, EMBEDDING)


def test_without_gpus_nothing_is_placed() -> None:
    assert place(["generate", "embed"], 0, 1, MEMORY, EMBEDDING) == [None, None]


def test_a_placement_maps_through_the_launchers_own_visible_devices() -> None:
    env = Placement((0, 1), 0.8).env("generate", ["3", "5"])
    assert env == {"CUDA_VISIBLE_DEVICES": "3,5", "GPU_MEMORY_UTILIZATION": "0.8000"}
    assert Placement((2,), 0.1).env("embed") == {
        "CUDA_VISIBLE_DEVICES": "2",
        "EMBEDDING_GPU_MEMORY_UTILIZATION": "0.1000",
    }


def test_gpu_detection_asks_vllms_platform_not_the_environment() -> None:
    """CUDA_VISIBLE_DEVICES set and an nvidia-smi on PATH made the old guess say CUDA on this CPU machine."""
    fake_bin = ROOT / "test-artifacts" / "fake-bin"
    fake_bin.mkdir(parents=True, exist_ok=True)
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho GPU 0\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    code = "from worker.engine import has_cuda; print(has_cuda())"
    answer = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    from vllm.platforms import current_platform

    assert answer.stdout.strip().splitlines()[-1] == str(current_platform.is_cuda_alike())
    assert has_cuda() == current_platform.is_cuda_alike()


def test_the_engine_knobs_reach_llms_arguments_under_vllms_own_names() -> None:
    from vllm.engine.arg_utils import EngineArgs

    settings = Settings(
        max_num_seqs=64, max_num_batched_tokens=8192, kv_cache_dtype="fp8", quantization="fp8", block_size=32
    )
    kwargs = generation_kwargs(settings, cuda=True)
    knobs = {
        "max_num_seqs": 64,
        "max_num_batched_tokens": 8192,
        "kv_cache_dtype": "fp8",
        "quantization": "fp8",
        "block_size": 32,
    }
    assert {name: kwargs.get(name) for name in knobs} == knobs
    assert set(knobs) <= {field.name for field in dataclasses.fields(EngineArgs)}
    assert "kv_cache_memory_bytes" not in kwargs  # on CUDA the memory share sizes the cache
    unset = generation_kwargs(Settings(), cuda=True)
    assert not set(knobs) & set(unset)  # unset: vLLM's defaults
    # Jobs' priorities reach vLLM's scheduler (OverlappedEngine passes them with each static batch).
    assert unset["scheduling_policy"] == "priority" and "scheduling_policy" in {
        field.name for field in dataclasses.fields(EngineArgs)
    }


def test_the_cpu_seed_plugin_stands_aside_off_the_cpu_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.platforms import current_platform
    from vllm.v1.worker import gpu_input_batch

    from worker import vllm_plugin

    original = gpu_input_batch.InputBatch.__init__
    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: False)
    monkeypatch.delattr(gpu_input_batch.InputBatch, "_llm_batch_patched", raising=False)
    vllm_plugin.register()
    assert gpu_input_batch.InputBatch.__init__ is original


def test_the_worker_image_can_compile_triton_kernels() -> None:
    """Triton and torch.compile build kernels at the first forward pass with a C compiler and Python.h."""
    packages = (ROOT / "docker" / "worker.Dockerfile").read_text().split("apt-get install", 1)[1].split("&&", 1)[0]
    assert "build-essential" in packages and "python3.11-dev" in packages


@pytest.mark.parametrize(
    ("driver", "installs"),
    [
        ("590.48.01", "vllm==0.32.0 \n"),  # R580+: PyPI's CUDA 13 wheels
        ("578.10", "vllm==0.32.0 --extra-index-url https://download.pytorch.org/whl/cu129"),
        ("550.54.15", None),  # too old: the install stops with what to do
    ],
)
def test_make_install_chooses_the_wheels_for_the_driver(tmp_path: Path, driver: str, installs: str | None) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {driver}\n")
    smi.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    dry = subprocess.run(["make", "-n", "-B", "install"], cwd=ROOT, env=env, capture_output=True, text=True)
    if installs is None:
        assert dry.returncode != 0
        assert f"NVIDIA driver {driver.split('.')[0]} is too old for vLLM 0.32.0" in dry.stderr
        assert "upgrade the driver" in dry.stderr
    else:
        assert dry.returncode == 0, dry.stderr
        assert f"pip install --quiet {installs}" in dry.stdout + "\n"
