"""A stand-in engine for unit tests of the queue and worker loop (never the only test of a path)."""

from __future__ import annotations

from typing import Any, Literal

from app.jobs.lines import ChatBody, CompletionBody, EmbeddingBody, Request
from app.jobs.output_lines import Choice, Embeddings, Generation
from app.jobs.planning import ModelLimits, ServedModels
from worker.engine import RequestRejected


class FakeEngine:
    """Echoes prompts; dies on any batch holding a prompt that contains `poison`, and refuses
    (as vLLM refuses a request, the engine running on) any batch holding `REFUSED`. With
    `kind="embed"` it holds "demo-embed" and embeds each input as [its length, its first
    byte, its last byte]."""

    REFUSED = b"REFUSED"

    tensor_parallel_size = 1
    kv_cache_tokens: int | None = None

    def __init__(self, poison: str | None = None, kind: Literal["generate", "embed"] = "generate") -> None:
        self.poison = poison
        self.kind = kind
        self.model_name = "demo-embed" if kind == "embed" else "demo-llama"
        self.models = ServedModels(self.model_name)
        # prompts are their UTF-8 bytes
        self.limits = ModelLimits(max_model_len=256, vocab_size=256, embedding_size=3 if kind == "embed" else None)
        self.calls: list[int] = []
        self.max_tokens_per_call: list[list[int]] = []

    def prompt_token_ids(self, request: Request) -> list[int]:
        body = request.body
        assert isinstance(body, ChatBody | CompletionBody)
        text = " ".join(m.text() for m in body.messages) if isinstance(body, ChatBody) else str(body.prompt)
        return list(text.encode())

    def input_token_ids(self, request: Request) -> list[list[int]]:
        assert isinstance(request.body, EmbeddingBody)
        return [list(item.encode()) if isinstance(item, str) else item for item in request.body.inputs()]

    def check(self, sampling: dict[str, Any]) -> None:
        pass

    def check_pooling(self, pooling: dict[str, Any]) -> None:
        pass

    def embed(self, inputs: list[list[list[int]]], pooling: list[dict[str, Any]]) -> list[Embeddings]:
        self.calls.append(len(inputs))
        if any(self.REFUSED in bytes(ids) for request in inputs for ids in request):
            raise RequestRejected("a request the engine refuses")
        return [
            Embeddings(
                prompt_tokens=sum(len(ids) for ids in request),
                vectors=[[float(len(ids)), float(ids[0]), float(ids[-1])] for ids in request],
            )
            for request in inputs
        ]

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
