"""A vLLM general plugin (loaded in every vLLM process, the engine's workers included):
seeded sampling on the CPU build survives chunked prefill.

vLLM 0.32 rewinds a seeded request's generator after a step whose sampled token it
discards (a prompt prefilled in chunks): `gen.set_offset(gen.get_offset() - 4)`. That is
the CUDA Philox generator's API; a CPU generator raises "CPU Generator does not use offset",
and the whole engine dies with every request in it (`tests/integration/test_sampling.py`:
160 seeded lines sampled hot). On CPU the rewind is skipped instead: the run goes on, and a
seeded line whose prompt was prefilled in chunks may draw other tokens than it would
unchunked (seeds stay reproducible run to run, since the chunking is). CUDA is untouched.
"""

from __future__ import annotations

from typing import Any


class _CpuOffsetTolerant:
    """What `generators.get(i)` hands that rewind on CPU: offsets read 0 and are not set."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator

    def get_offset(self) -> int:
        return 0

    def set_offset(self, offset: int) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)


class _Generators(dict):  # type: ignore[type-arg]
    """The input batch's generators; `.get` (used only by the rewind and the rejection
    sampler, which this service never runs) wraps a CPU generator."""

    def get(self, key: Any, default: Any = None) -> Any:
        generator = super().get(key, default)
        if generator is not None and getattr(getattr(generator, "device", None), "type", None) == "cpu":
            return _CpuOffsetTolerant(generator)
        return generator


def register() -> None:
    """Patches the CPU build alone: on any other platform (CUDA's runner does not even use this
    class the same way) it does nothing, so it cannot surprise a GPU run."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.worker import gpu_input_batch

    batch_class = gpu_input_batch.InputBatch
    if getattr(batch_class, "_llm_batch_patched", False):
        return
    original = batch_class.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.generators = _Generators(self.generators)

    batch_class.__init__ = __init__  # type: ignore[method-assign]
    batch_class._llm_batch_patched = True  # type: ignore[attr-defined]
