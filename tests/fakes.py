"""A stand-in engine for unit tests of the queue and worker loop (never the only test of a path)."""

from __future__ import annotations

from typing import Any

from app.jobs.lines import ChatBody, Request
from app.jobs.output_lines import Choice, Generation
from app.jobs.planning import ModelLimits, ServedModels
from worker.engine import RequestRejected


class FakeEngine:
    """Echoes prompts; dies on any batch holding a prompt that contains `poison`, and refuses
    (as vLLM refuses a request, the engine running on) any batch holding `REFUSED`."""

    REFUSED = b"REFUSED"

    model_name = "demo-llama"
    limits = ModelLimits(max_model_len=256, vocab_size=256)  # prompts are their UTF-8 bytes
    tensor_parallel_size = 1
    kv_cache_tokens = None
    models = ServedModels("demo-llama")

    def __init__(self, poison: str | None = None) -> None:
        self.poison = poison
        self.calls: list[int] = []
        self.max_tokens_per_call: list[list[int]] = []

    def prompt_token_ids(self, request: Request) -> list[int]:
        body = request.body
        text = " ".join(m.text() for m in body.messages) if isinstance(body, ChatBody) else str(body.prompt)
        return list(text.encode())

    def check(self, sampling: dict[str, Any]) -> None:
        pass

    def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[Generation]:
        self.calls.append(len(prompts))
        if any(self.REFUSED in bytes(p) for p in prompts):
            raise RequestRejected("a request the engine refuses")
        self.max_tokens_per_call.append([kwargs["max_tokens"] for kwargs in sampling])
        if self.poison and any(self.poison.encode() in bytes(p) for p in prompts):
            raise RuntimeError("engine died")
        return [
            Generation(
                prompt_tokens=len(p),
                choices=[Choice(text=bytes(p).decode()[::-1], completion_tokens=3, finish_reason="length")],
            )
            for p in prompts
        ]
