"""The `generate` engine call (`LLM.generate`, or `LLM.enqueue` and the engine's steps when
static batches overlap): a line's prompt as token ids and its `Sampling` in, a `Generation` of
`n` choices out. The completions, chat and responses kinds run on it (app.jobs.endpoints.generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from app.jobs.endpoints.call import EngineCall

if TYPE_CHECKING:
    from app.data.json_values import EngineTelemetry
    from app.jobs.lines import Request


@dataclass(frozen=True)
class Sampling:
    """A generation line's sampling: vLLM `SamplingParams` fields (None: vLLM's default), and
    the LoRA adapter the engine applies (not a `SamplingParams` field)."""

    max_tokens: int  # per choice
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: int | None = None  # top log probabilities per token (None: none)
    stop: list[str] | None = None
    structured_outputs: dict[str, Any] | None = None  # `StructuredOutputsParams` keyword arguments
    min_tokens: int | None = None
    ignore_eos: bool = False
    lora_adapter: str | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        """`SamplingParams` keyword arguments, the fields left at vLLM's default left out."""
        kwargs: dict[str, Any] = {"max_tokens": self.max_tokens, "n": self.n}
        optional = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logprobs": self.logprobs,
            "stop": self.stop,
            "structured_outputs": self.structured_outputs,
            "min_tokens": self.min_tokens,
            "ignore_eos": self.ignore_eos or None,
        }
        kwargs.update({name: value for name, value in optional.items() if value is not None})
        return kwargs


@dataclass(frozen=True)
class GenerationPlan:
    """A line the engine generates for: its prompt as token ids (chat template applied,
    truncated if the batch asks) and its sampling."""

    request: Request
    prompt: list[int]
    sampling: Sampling

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_tokens


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]]  # the most likely tokens at this position, best first


@dataclass(frozen=True)
class Choice:
    text: str
    completion_tokens: int
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class RequestTiming:
    """When the engine scheduled a request and produced its first and last tokens
    (the engine's monotonic clock, seconds), and how often it was preempted."""

    scheduled: float
    first_token: float
    last_token: float
    preemptions: int = 0


@dataclass(frozen=True)
class Generation:
    """What the engine made of one request: `n` choices."""

    prompt_tokens: int
    choices: list[Choice]
    timing: RequestTiming | None = None
    cached_tokens: int = 0  # prompt tokens found in the engine's prefix cache

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)


class Generator(Protocol):
    """The engine methods generation runs on (`worker.engine.VllmEngine`)."""

    def check(self, sampling: Sampling) -> None: ...

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]: ...

    def enqueue(self, prompts: list[list[int]], sampling: list[Sampling], priority: int = 0) -> list[str]: ...


class GenerateCall(EngineCall[GenerationPlan, Generation, Generator]):
    name: ClassVar[str] = "generate"
    plan_type: ClassVar[type] = GenerationPlan
    result_type: ClassVar[type] = Generation
    overlaps: ClassVar[bool] = True
    packs_parsed_lines: ClassVar[bool] = True

    def check(self, engine: Generator, plan: GenerationPlan) -> None:
        engine.check(plan.sampling)

    def run(self, engine: Generator, plans: list[GenerationPlan]) -> list[Generation]:
        return engine.generate([plan.prompt for plan in plans], [plan.sampling for plan in plans])

    def enqueue(self, engine: Generator, plans: list[GenerationPlan], priority: int) -> list[str]:
        return engine.enqueue([plan.prompt for plan in plans], [plan.sampling for plan in plans], priority=priority)

    def prefix(self, plan: GenerationPlan) -> list[int]:
        return plan.prompt

    def length(self, plan: GenerationPlan) -> tuple[int, int]:
        return plan.sampling.max_tokens, len(plan.prompt)

    def token_counts(self, plan: GenerationPlan) -> tuple[int, int]:
        return len(plan.prompt), plan.sampling.max_tokens * plan.sampling.n

    def telemetry(self, results: Sequence[Generation], kv_cache_tokens: int | None) -> EngineTelemetry | None:
        from app.jobs.telemetry import batch_telemetry

        return batch_telemetry(list(results), kv_cache_tokens) if results else None

    def output_lengths(self, results: Sequence[Generation]) -> list[int]:
        return [result.completion_tokens for result in results]


GENERATE = GenerateCall()
