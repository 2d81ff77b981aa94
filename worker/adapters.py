"""LoRA adapters of the worker's model (`LORA_MODULES`): the engine arguments that make
room for them, their loading when the engine starts, and the `LoRARequest` of each line.

Lines naming different adapters (or none) share one static batch: `LLM.generate` takes
one `LoRARequest` (or None, for the base model) per prompt.

Without CUDA the engine keeps one adapter slot more than there are adapters. vLLM
0.32's CPU LoRA kernels (`vllm.lora.ops.torch_ops`) pick each token's adapter by
indexing the stacked adapter weights with the request's slot, and a request without an
adapter has slot -1, which Python indexing reads as the last slot: with every slot
taken, base-model lines in a static batch that also holds adapter lines were run with
the last adapter's weights (no error; measured on the demo model). A slot no adapter
ever takes stays zero, so -1 adds nothing. GPU kernels skip -1 and need no spare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.jobs.endpoints.generate_call import Sampling


def lora_engine_kwargs(adapters: Mapping[str, str], max_lora_rank: int, cuda: bool) -> dict[str, Any]:
    """`LLM` keyword arguments for serving `adapters` (none without adapters: LoRA off)."""
    if not adapters:
        return {}
    spare = 0 if cuda else 1
    return {"enable_lora": True, "max_loras": len(adapters) + spare, "max_lora_rank": max_lora_rank}


def load_adapters(llm: Any, adapters: Mapping[str, str]) -> dict[str, Any]:
    """Loads every adapter into the engine now, so one it cannot load stops the worker at
    start, naming it (vLLM loading a broken adapter in `generate` kills the engine core).
    Returns name -> `LoRARequest`, ids 1, 2, ... in name order."""
    from vllm.lora.request import LoRARequest

    requests = {}
    for lora_id, name in enumerate(sorted(adapters), start=1):
        request = LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=adapters[name])
        try:
            llm.llm_engine.add_lora(request)
        except Exception as exc:
            raise RuntimeError(f"LoRA adapter {name!r} ({adapters[name]}) could not be loaded: {exc}") from exc
        requests[name] = request
    return requests


def lora_requests(adapters: Mapping[str, Any], sampling: list[Sampling]) -> list[Any] | None:
    """Each line's `LoRARequest` (None for the base model), or None when no line names an adapter."""
    names = [line.lora_adapter for line in sampling]
    if not any(names):
        return None
    return [adapters[name] if name else None for name in names]
