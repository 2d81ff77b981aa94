"""What the generating kinds (completions, chat, responses) share: the OpenAI sampling fields
of a body, structured outputs, and the planning of a prompt (token ids checked against the
vocabulary and the context, truncated if the batch asks).

A line's `model` may name the base model or one of its LoRA adapters (`ServedModels`); the
adapter rides in the line's `Sampling.lora_adapter` for the engine to apply.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.endpoints.base import (
    SEED_RANGE,
    Endpoint,
    JobDefaults,
    PlanContext,
    Tokenizer,
    UnsupportedRequest,
    check_vocabulary,
)
from app.jobs.endpoints.call import AnyCall
from app.jobs.endpoints.generate_call import GENERATE, Generation, GenerationPlan, Sampling
from app.jobs.json_schemas import json_schema_problem
from app.jobs.output_lines import PromptTokensDetails, Usage

if TYPE_CHECKING:
    from app.jobs.lines import Request


class SampledBody(BaseModel):
    """The sampling fields completions and chat bodies share."""

    # Unknown fields are kept so the worker can answer each with a line error
    # naming the field, instead of ignoring it silently.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=16)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None


def body_sampling(body: SampledBody, max_tokens: int, logprobs: int | None) -> Sampling:
    """A completions or chat body's sampling (`max_tokens` and `logprobs` as its kind reads them)."""
    return Sampling(
        max_tokens=max_tokens,
        n=body.n,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logprobs=logprobs,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        structured_outputs=structured_output(body.response_format) if body.response_format else None,
    )


def structured_output(response_format: dict[str, Any], param: str = "response_format") -> dict[str, Any] | None:
    """`response_format` (or a responses line's `text.format`, named by `param`) as vLLM's
    structured outputs."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise UnsupportedRequest("response_format.json_schema.schema must be a JSON object.", "response_format")
        check_json_schema(schema, param)
        return {"json": schema}
    raise UnsupportedRequest(f"Unsupported response_format type {kind!r}.", param="response_format.type")


def check_json_schema(schema: dict[str, Any], param: str) -> None:
    """Refuses a JSON schema vLLM cannot compile into a grammar, naming `param`
    (app.jobs.json_schemas says which)."""
    problem = json_schema_problem(schema)
    if problem is not None:
        raise UnsupportedRequest(f"The JSON schema in {param} {problem}", param=param)


def usage(generation: Generation) -> Usage:
    return Usage(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        total_tokens=generation.prompt_tokens + generation.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=generation.cached_tokens),
    )


G = TypeVar("G", bound=BaseModel)


class GenerationEndpoint(Endpoint[G]):
    """A kind the generation engine serves with `generate` (or `enqueue`), one prompt a line."""

    worker_kind: ClassVar = "generate"
    call: ClassVar[AnyCall] = GENERATE
    generates: ClassVar[bool] = True

    @abstractmethod
    def sampling(self, body: G, defaults: JobDefaults) -> Sampling:
        """The body's sampling; UnsupportedRequest for a field this service cannot honour."""

    @abstractmethod
    def prompt_token_ids(self, tokenizer: Tokenizer, body: G) -> list[int]:
        """The prompt as the model sees it, with the model's (Hugging Face) tokenizer."""

    @abstractmethod
    def model_of(self, body: G) -> str | None:
        """The model the line names (None: the job's)."""

    def seed_of(self, body: G) -> int | None:
        return None

    def plan(self, request: Request, ctx: PlanContext) -> GenerationPlan:
        """Refuses an unknown field, a model that is neither `ctx.models.base` nor one of its
        adapters, a seed out of range, more logprobs than the engine returns, a JSON schema
        that does not compile, an empty prompt, a token id out of the vocabulary and a
        prompt too long for the context (UnsupportedRequest)."""
        body = self.body_of(request)
        limits, defaults = ctx.limits, ctx.defaults
        sampling = self.sampling(body, defaults)
        adapter = ctx.models.adapter_for(self.model_of(body)) if ctx.models is not None else None
        if adapter is not None:
            sampling = replace(sampling, lora_adapter=adapter)
        seed = self.seed_of(body)
        if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise UnsupportedRequest(f"seed {seed} is out of range: it must fit in a signed 64-bit integer.", "seed")
        if sampling.logprobs is not None and sampling.logprobs > limits.max_logprobs:
            field = self.line_param(body, "logprobs")
            raise UnsupportedRequest(
                f"{field}={sampling.logprobs} is too many: this model returns at most {limits.max_logprobs} log "
                "probabilities per token.",
                param=field,
            )
        ids = self.prompt_token_ids(ctx.tokenizer, body)
        if not ids:
            raise UnsupportedRequest("The prompt is empty: give at least one token.", param="prompt")
        check_vocabulary(ids, limits, "prompt")
        completion, max_model_len = sampling.max_tokens, limits.max_model_len
        if defaults.truncate_prompts and completion < max_model_len:
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
        return GenerationPlan(request=request, prompt=ids, sampling=sampling)

    def line_param(self, body: G, engine_field: str | None) -> str | None:
        if engine_field == "structured_outputs":
            return "response_format"
        return super().line_param(body, engine_field)
