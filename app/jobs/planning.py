"""Request planning: from one input line to what the engine runs.

Parse the line, map its OpenAI body to vLLM `SamplingParams` keyword arguments, render
its prompt as token ids (chat template applied) and check it fits the context. An
embeddings line (`plan_embedding`) becomes one token-id list per input, each checked
against the context, and `PoolingParams` keyword arguments. The worker plans every line
this way before a static batch, and a dry run plans every line the same way (on the same
model's tokenizer), so what a dry run calls failing is what would fail, and both count
the same tokens. Only what the engine alone can tell (a JSON schema its structured-output
backend cannot compile, say) waits for the worker's engine check; `line_param` names the
line's field then.

A line's `model` may name the base model or one of its LoRA adapters (`ServedModels`);
the adapter rides with the line's sampling under `LORA_ADAPTER` for the engine to apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.core.settings import Settings
from app.jobs.json_schemas import json_schema_problem
from app.jobs.lines import EMBEDDINGS, ChatBody, CompletionBody, EmbeddingBody, Request, parse_line
from app.jobs.responses import ResponsesBody


class JobDefaults(BaseModel):
    """What a job sets for all its lines (stored on the job as `sampling_defaults`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    max_tokens: int  # for lines that give none
    truncate_prompts: bool = False  # keep a too-long prompt's end instead of failing the line
    pack_window: int | None = None  # length-aware packing: static batches per window
    # overlapped (worker.overlap), or strict: one blocking generate per static batch.
    batching: Literal["overlapped", "strict"] = "overlapped"

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=True) | {"max_tokens": self.max_tokens}


# Fields that change nothing in an offline batch, accepted with these values.
TOLERATED = {"stream": (False, None), "user": None, "store": None, "service_tier": None}


class UnsupportedRequest(ValueError):
    """A well-formed request this service cannot honour; it becomes one error line."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def max_tokens_of(body: CompletionBody | ChatBody | ResponsesBody, defaults: JobDefaults) -> int:
    if isinstance(body, ResponsesBody):
        return body.max_output_tokens or defaults.max_tokens
    if isinstance(body, ChatBody) and body.max_completion_tokens is not None:
        return body.max_completion_tokens
    return body.max_tokens or defaults.max_tokens


def _refuse_unknown(body: BaseModel) -> None:
    for name, value in (body.model_extra or {}).items():
        allowed = TOLERATED.get(name, ())
        if name in TOLERATED and (allowed is None or value in allowed):
            continue
        raise UnsupportedRequest(f"Unsupported parameter '{name}' (value {value!r}) in an offline batch.", param=name)


def _structured_output(response_format: dict[str, Any], param: str = "response_format") -> dict[str, Any] | None:
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


def _logprobs(body: CompletionBody | ChatBody) -> int | None:
    if isinstance(body, ChatBody):
        if body.top_logprobs is not None and not body.logprobs:
            raise UnsupportedRequest("top_logprobs needs logprobs: true.", param="top_logprobs")
        return (body.top_logprobs or 0) if body.logprobs else None
    return body.logprobs


def _responses_sampling(body: ResponsesBody, defaults: JobDefaults) -> dict[str, Any]:
    unsupported = body.unsupported()
    if unsupported is not None:
        param, message = unsupported
        raise UnsupportedRequest(message, param=param)
    kwargs: dict[str, Any] = {"max_tokens": max_tokens_of(body, defaults), "n": 1}
    optional = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "structured_outputs": _text_format_output(body.text_format()),
    }
    kwargs.update({name: value for name, value in optional.items() if value is not None})
    return kwargs


def _text_format_output(text_format: Any) -> dict[str, Any] | None:
    """A responses line's `text.format`, as the chat path's `response_format` maps it."""
    if text_format is None:
        return None
    if not isinstance(text_format, dict):
        raise UnsupportedRequest("text.format must be a JSON object.", param="text.format")
    kind = text_format.get("type")
    if kind in ("text", "json_object"):
        return _structured_output(text_format)
    if kind != "json_schema":
        raise UnsupportedRequest(f"Unsupported text.format type {kind!r}.", param="text.format.type")
    if not isinstance(text_format.get("name"), str):
        raise UnsupportedRequest("text.format.name is required for a json_schema format.", "text.format.name")
    schema = text_format.get("schema")
    if not isinstance(schema, dict):
        raise UnsupportedRequest("text.format.schema must be a JSON object.", param="text.format.schema")
    return _structured_output({"type": "json_schema", "json_schema": {"schema": schema}}, param="text.format")


def sampling_kwargs(body: CompletionBody | ChatBody | ResponsesBody, defaults: JobDefaults) -> dict[str, Any]:
    """Keyword arguments for `SamplingParams`; `structured_outputs` is a dict the engine
    turns into `StructuredOutputsParams`."""
    if isinstance(body, ResponsesBody):
        return _responses_sampling(body, defaults)
    _refuse_unknown(body)
    kwargs: dict[str, Any] = {"max_tokens": max_tokens_of(body, defaults), "n": body.n}
    optional = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "logprobs": _logprobs(body),
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "structured_outputs": _structured_output(body.response_format) if body.response_format else None,
    }
    kwargs.update({name: value for name, value in optional.items() if value is not None})
    return kwargs


def _generation_body(request: Request) -> CompletionBody | ChatBody | ResponsesBody:
    if isinstance(request.body, EmbeddingBody):
        raise UnsupportedRequest(f"An embeddings request on a batch for {request.endpoint}.", param="input")
    return request.body


def prompt_token_ids(tokenizer: Any, request: Request) -> list[int]:
    body = _generation_body(request)
    if isinstance(body, ChatBody | ResponsesBody):
        messages: list[Any] = (
            body.messages()
            if isinstance(body, ResponsesBody)
            else [{"role": m.role, "content": m.text()} for m in body.messages]
        )
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(str(rendered), add_special_tokens=False))
    if isinstance(body.prompt, list):
        return list(body.prompt)
    return list(tokenizer.encode(body.prompt))


@dataclass(frozen=True)
class PlannedRequest:
    request: Request
    prompt: list[int]  # token ids, chat template applied, truncated if the batch asks
    sampling: dict[str, Any]  # SamplingParams keyword arguments
    max_tokens: int  # per choice


@dataclass(frozen=True)
class ModelLimits:
    """What the model accepts, for checks vLLM would otherwise make while the whole
    static batch waits (one refused request fails the whole `generate` call)."""

    max_model_len: int  # prompt and completion tokens
    vocab_size: int  # token ids run from 0 to vocab_size - 1
    # Embedding models: the vector's length, and whether (and to which lengths) `dimensions`
    # may shorten it (Matryoshka models only).
    embedding_size: int | None = None
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None
    max_logprobs: int = 20  # log probabilities per token the engine returns at most (vLLM's default max_logprobs)


SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's int64; a larger seed crashes the engine's random generator
LORA_ADAPTER = "lora_adapter"  # in a line's sampling: the LoRA adapter the engine applies (not a SamplingParams field)


@dataclass(frozen=True)
class ServedModels:
    """The names a line's `model` may give: the base model (the job's), or one of the LoRA
    adapters of it that every worker holding it registers (`LORA_MODULES`)."""

    base: str
    adapters: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> ServedModels:
        return cls(settings.model_name, frozenset(settings.lora_modules))

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a line names, None for the base model; UnsupportedRequest for any other name."""
        if model is None or model == self.base:
            return None
        if model in self.adapters:
            return model
        served = ", ".join(repr(name) for name in [self.base, *sorted(self.adapters)])
        raise UnsupportedRequest(
            f"The model {model!r} is not served here: a line may name {served} (or no model).",
            param="model",
            code="model_not_found",
        )


def plan_request(
    raw: bytes,
    index: int,
    endpoint: str,
    defaults: JobDefaults,
    tokenize: Callable[[Request], list[int]],
    limits: ModelLimits,
    models: ServedModels | None = None,
) -> PlannedRequest:
    """Raises LineError for a line that breaks the format, UnsupportedRequest for one the
    model cannot serve (an unknown field, a model that is neither `models.base` nor one of
    its adapters, a token id out of the vocabulary, a seed out of range, more logprobs than
    the engine returns, a JSON schema that does not compile, an empty prompt, a prompt too
    long for the context)."""
    return plan_parsed(parse_line(raw, index, endpoint), defaults, tokenize, limits, models)


def plan_parsed(
    request: Request,
    defaults: JobDefaults,
    tokenize: Callable[[Request], list[int]],
    limits: ModelLimits,
    models: ServedModels | None = None,
) -> PlannedRequest:
    """`plan_request` for a line already parsed (the worker parses a packed window's lines
    first, to order them before tokenizing)."""
    max_model_len = limits.max_model_len
    body = _generation_body(request)
    sampling = sampling_kwargs(body, defaults)
    adapter = models.adapter_for(body.model) if models is not None else None
    if adapter is not None:
        sampling[LORA_ADAPTER] = adapter
    seed = body.seed
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise UnsupportedRequest(f"seed {seed} is out of range: it must fit in a signed 64-bit integer.", "seed")
    logprobs = sampling.get("logprobs")
    if logprobs is not None and logprobs > limits.max_logprobs:
        field = line_param(body, "logprobs")
        raise UnsupportedRequest(
            f"{field}={logprobs} is too many: this model returns at most {limits.max_logprobs} log probabilities "
            "per token.",
            param=field,
        )
    ids = tokenize(request)
    if not ids:
        raise UnsupportedRequest("The prompt is empty: give at least one token.", param="prompt")
    _check_vocabulary(ids, limits, "prompt")
    completion = max_tokens_of(body, defaults)
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
    return PlannedRequest(request=request, prompt=ids, sampling=sampling, max_tokens=completion)


def _check_vocabulary(ids: list[int], limits: ModelLimits, param: str) -> None:
    outside = [token for token in ids if not 0 <= token < limits.vocab_size]
    if outside:
        raise UnsupportedRequest(
            f"Token id {outside[0]} is out of vocabulary: this model's token ids run from 0 to "
            f"{limits.vocab_size - 1}.",
            param=param,
            code="invalid_token_id",
        )


def line_param(body: CompletionBody | ChatBody | ResponsesBody | EmbeddingBody, engine_field: str | None) -> str | None:
    """The field of a line's body that an engine parameter (a `SamplingParams` or
    `PoolingParams` field, as vLLM names the one it refuses) comes from, to name in the
    line's error; None when the line has no such field."""
    if engine_field == "structured_outputs":
        return "text.format" if isinstance(body, ResponsesBody) else "response_format"
    if engine_field == "logprobs" and isinstance(body, ChatBody):
        return "top_logprobs"
    if engine_field == "max_tokens":
        if isinstance(body, ResponsesBody):
            return "max_output_tokens"
        if isinstance(body, ChatBody) and body.max_completion_tokens is not None:
            return "max_completion_tokens"
    if engine_field is not None and engine_field in type(body).model_fields:
        return engine_field
    return None


def input_token_ids(tokenizer: Any, request: Request) -> list[list[int]]:
    """An embeddings request's inputs as token ids, one list per input (the tokenizer adds
    the model's special tokens, as vLLM does for a text prompt)."""
    body = request.body
    if not isinstance(body, EmbeddingBody):
        raise UnsupportedRequest(f"A {request.endpoint} request on an embeddings batch.", param="input")
    return [list(tokenizer.encode(item)) if isinstance(item, str) else list(item) for item in body.inputs()]


def pooling_kwargs(body: EmbeddingBody, limits: ModelLimits) -> dict[str, Any]:
    """Keyword arguments for `PoolingParams`. vLLM shortens a vector to `dimensions` only
    for Matryoshka models (and then only to the lengths the model lists)."""
    _refuse_unknown(body)
    dimensions = body.dimensions
    if dimensions is None:
        return {}
    if not limits.matryoshka:
        raise UnsupportedRequest(
            f"dimensions={dimensions} is not supported: this model is not a Matryoshka model, so its "
            "embeddings cannot be shortened. Leave dimensions unset.",
            param="dimensions",
        )
    if limits.embedding_size is not None and dimensions > limits.embedding_size:
        raise UnsupportedRequest(
            f"dimensions={dimensions} is out of range: this model's embeddings have {limits.embedding_size}.",
            param="dimensions",
        )
    if limits.matryoshka_dimensions and dimensions not in limits.matryoshka_dimensions:
        allowed = ", ".join(str(d) for d in limits.matryoshka_dimensions)
        raise UnsupportedRequest(f"dimensions={dimensions} is not one of this model's: {allowed}.", "dimensions")
    return {"dimensions": dimensions}


@dataclass(frozen=True)
class PlannedEmbedding:
    request: Request
    inputs: list[list[int]]  # token ids, one list per input (truncated if the batch asks)
    pooling: dict[str, Any]  # PoolingParams keyword arguments, the same for every input


def plan_embedding(
    raw: bytes,
    index: int,
    defaults: JobDefaults,
    tokenize: Callable[[Request], list[list[int]]],
    limits: ModelLimits,
) -> PlannedEmbedding:
    """Raises LineError for a line that breaks the format, UnsupportedRequest for one the
    model cannot serve (an unknown field, `dimensions` on a model that cannot shorten its
    vectors, an empty input, a token id out of the vocabulary, an input too long for the
    context). `truncate_prompts` keeps the start of a long input, as embedding models'
    tokenizers truncate."""
    request = parse_line(raw, index, EMBEDDINGS)
    assert isinstance(request.body, EmbeddingBody)  # parse_line gives the endpoint's body
    pooling = pooling_kwargs(request.body, limits)
    inputs = tokenize(request)
    max_model_len = limits.max_model_len
    for position, ids in enumerate(inputs):
        if not ids:
            raise UnsupportedRequest(f"Input {position} is empty: give at least one token.", param="input")
        _check_vocabulary(ids, limits, "input")
        if len(ids) > max_model_len:
            if defaults.truncate_prompts:
                inputs[position] = ids[:max_model_len]
                continue
            raise UnsupportedRequest(
                f"This model's maximum context length is {max_model_len} tokens. However, input {position} has "
                f"{len(ids)} tokens. Please reduce the input, or create the batch with truncate_prompts.",
                param="input",
                code="context_length_exceeded",
            )
    return PlannedEmbedding(request=request, inputs=inputs, pooling=pooling)
