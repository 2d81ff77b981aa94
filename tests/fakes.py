"""A stand-in engine for unit tests of the queue and worker loop (never the only test of a path)."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from app.jobs.endpoints.base import ModelLimits, ServedModels
from app.jobs.endpoints.embed_call import Embeddings, Pooling
from app.jobs.endpoints.generate_call import Choice, Generation, Sampling
from app.jobs.endpoints.score_call import Scores
from worker.engine import RequestRejected


class FakeEngine:
    """Echoes prompts; dies on any batch holding a prompt that contains `poison`, and refuses
        (as vLLM refuses a request, the engine running on) any batch holding `REFUSED`. With
        `kind="embed"` it holds "demo-embed" and embeds each input as [its length, its first
        byte, its last byte], and scores a pair (score and rerank lines) as the share of the
    characters of either text found in both. Enqueued requests (overlapped static batches) run as a scheduler
        runs them: the first `max_num_seqs` unfinished ones each step, each for as many steps as
        its `max_tokens`; `steps` records which static batches (by enqueue order) ran in each."""

    REFUSED = b"REFUSED"

    tensor_parallel_size = 1
    kv_cache_tokens: int | None = None

    def __init__(
        self, poison: str | None = None, kind: Literal["generate", "embed"] = "generate", max_num_seqs: int = 256
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self._queue: dict[str, tuple[list[int], int, int]] = {}  # request id -> prompt, steps left, its static batch
        self._ids = itertools.count()
        self.steps: list[set[int]] = []
        self.prompts_per_call: list[list[list[int]]] = []
        self.poison = poison
        self.kind = kind
        self.model_name = "demo-embed" if kind == "embed" else "demo-llama"
        self.models = ServedModels(self.model_name)
        self.tokenizer = ByteTokenizer()
        # prompts are their UTF-8 bytes
        self.limits = ModelLimits(max_model_len=256, vocab_size=256, embedding_size=3 if kind == "embed" else None)
        self.calls: list[int] = []
        self.priorities: list[int] = []  # each enqueue's priority
        self.max_tokens_per_call: list[list[int]] = []

    def check(self, sampling: Sampling) -> None:
        pass

    def check_pooling(self, pooling: Pooling) -> None:
        pass

    def embed(self, inputs: list[list[list[int]]], pooling: list[Pooling]) -> list[Embeddings]:
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

    def score(self, pairs: list[list[tuple[str, str]]]) -> list[Scores]:
        self.calls.append(len(pairs))
        if any(self.REFUSED.decode() in text for request in pairs for pair in request for text in pair):
            raise RequestRejected("a request the engine refuses")
        return [
            Scores(
                prompt_tokens=sum(len(a.encode()) + len(b.encode()) for a, b in request),
                scores=[_overlap(a, b) for a, b in request],
            )
            for request in pairs
        ]

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[tuple[float, bool]]]:
        """Each token after the first scores -(its id mod 5) / 10, the most likely when that is 0."""
        self.calls.append(len(prompts))
        if any(self.REFUSED in bytes(p) for p in prompts):
            raise RequestRejected("a request the engine refuses")
        return [[(-(token % 5) / 10, token % 5 == 0) for token in prompt[1:]] for prompt in prompts]

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        self.calls.append(len(prompts))
        if any(self.REFUSED in bytes(p) for p in prompts):
            raise RequestRejected("a request the engine refuses")
        self.max_tokens_per_call.append([line.max_tokens for line in sampling])
        if self.poison and any(self.poison.encode() in bytes(p) for p in prompts):
            raise RuntimeError("engine died")
        return [_echo(p) for p in prompts]

    def enqueue(self, prompts: list[list[int]], sampling: list[Sampling], priority: int = 0) -> list[str]:
        batch = len(self.calls)
        self.priorities.append(priority)
        self.calls.append(len(prompts))
        self.prompts_per_call.append(prompts)
        if any(self.REFUSED in bytes(p) for p in prompts):
            raise RequestRejected("a request the engine refuses")
        self.max_tokens_per_call.append([line.max_tokens for line in sampling])
        ids = [str(next(self._ids)) for _ in prompts]
        for request_id, prompt, line in zip(ids, prompts, sampling, strict=True):
            self._queue[request_id] = (prompt, line.max_tokens, batch)
        return ids

    def step(self) -> list[tuple[str, Generation]]:
        running = list(self._queue)[: self.max_num_seqs]
        if self.poison and any(self.poison.encode() in bytes(self._queue[r][0]) for r in running):
            self._queue.clear()  # what a dead engine held is gone with it
            raise RuntimeError("engine died")
        self.steps.append({self._queue[r][2] for r in running})
        finished = []
        for request_id in running:
            prompt, left, batch = self._queue[request_id]
            if left <= 1:
                del self._queue[request_id]
                finished.append((request_id, _echo(prompt)))
            else:
                self._queue[request_id] = (prompt, left - 1, batch)
        return finished

    def unfinished(self) -> int:
        return len(self._queue)

    def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self._queue.pop(request_id, None)


class ByteTokenizer:
    """A tokenizer whose tokens are a text's UTF-8 bytes; its chat template joins the messages'
    contents with spaces."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> str:
        return " ".join(message["content"] for message in conversation)


def _overlap(a: str, b: str) -> float:
    both, either = set(a) & set(b), set(a) | set(b)
    return len(both) / len(either) if either else 0.0


def _echo(prompt: list[int]) -> Generation:
    return Generation(
        prompt_tokens=len(prompt),
        choices=[Choice(text=bytes(prompt).decode()[::-1], completion_tokens=3, finish_reason="length")],
    )


class FixedTokens:
    """A planning tokenizer that reads every text as the same token ids."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.ids)

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> str:
        return ""
