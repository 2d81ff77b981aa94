"""From one input line to what the engine runs: parsed request, sampling, prompt ids.

The worker plans every line this way before a static batch; a dry run plans every
line the same way, so what a dry run calls failing is exactly what would fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.jobs.lines import Request, parse_line
from app.jobs.sampling import UnsupportedRequest, max_tokens_of, sampling_kwargs


@dataclass(frozen=True)
class PlannedRequest:
    request: Request
    prompt: list[int]  # token ids, chat template applied, truncated if the batch asks
    sampling: dict[str, Any]  # SamplingParams keyword arguments
    max_tokens: int  # per choice


def plan_request(
    raw: bytes,
    index: int,
    endpoint: str,
    defaults: dict[str, Any],
    tokenize: Callable[[Request], list[int]],
    max_model_len: int,
) -> PlannedRequest:
    """Raises LineError for a line that breaks the format, UnsupportedRequest for one the
    model cannot serve (an unknown field, a prompt too long for the context)."""
    request = parse_line(raw, index, endpoint)
    sampling = sampling_kwargs(request.body, defaults)
    ids = tokenize(request)
    completion = max_tokens_of(request.body, defaults)
    if defaults.get("truncate_prompts") and completion < max_model_len:
        ids = ids[-(max_model_len - completion) :]  # keep the end, as vLLM's own truncation does
    wanted = len(ids) + completion
    if wanted > max_model_len:
        raise UnsupportedRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested {wanted} "
            f"tokens ({len(ids)} in the prompt, {completion} for the completion). Please reduce the prompt or "
            "max_tokens, or create the batch with truncate_prompts.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return PlannedRequest(request=request, prompt=ids, sampling=sampling, max_tokens=completion)
