"""`/v1/embeddings`: one vector per input, all in one output line, from a worker of kind
`embed` (EMBEDDING_MODEL with vLLM's pooling runner, one `LLM.embed` per static batch).

Plain line: `{"custom_id", "input"}`. A plain `input` fits responses too: the job's endpoint
decides; at upload it is an embeddings line when it parses as one.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.jobs.endpoints.base import (
    Endpoint,
    ModelLimits,
    PlanContext,
    Tokenizer,
    UnsupportedRequest,
    check_vocabulary,
    refuse_unknown,
)
from app.jobs.endpoints.call import AnyCall
from app.jobs.endpoints.embed_call import EMBED, Pooling, PoolingPlan
from app.jobs.endpoints.embed_call import Embeddings as EngineEmbeddings
from app.jobs.output_lines import answer_line

if TYPE_CHECKING:
    from app.jobs.lines import Request

MAX_EMBEDDING_INPUTS = 2048  # items in one embeddings request, as OpenAI allows


class EmbeddingBody(BaseModel):
    """An embeddings request: one vector per input, all in one output line."""

    model_config = ConfigDict(extra="allow")  # unknown fields are refused per line, naming them

    model: str | None = None
    # A string, a list of strings, a list of token ids or a list of lists of token ids.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        shapes = (
            isinstance(value, list)
            and 0 < len(value) <= MAX_EMBEDDING_INPUTS
            and (
                all(isinstance(item, str) for item in value)
                or all(_is_token_id(item) for item in value)
                or all(isinstance(item, list) and all(_is_token_id(t) for t in item) for item in value)
            )
        )
        if not shapes:
            raise ValueError(
                "input must be a string, a list of strings, a list of token ids or a list of lists of token ids, "
                f"with 1 to {MAX_EMBEDDING_INPUTS} items"
            )
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """The request's inputs, one embedding each (a single string or token list is one input)."""
        value: Any = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(item, int) for item in value):
            return [list(value)]
        return list(value)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """An embeddings response, as OpenAI's API answers."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


def base64_vector(vector: list[float]) -> str:
    """A vector as OpenAI's `encoding_format: "base64"` gives it: little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def pooling(body: EmbeddingBody, limits: ModelLimits) -> Pooling:
    """The line's `PoolingParams`. vLLM shortens a vector to `dimensions` only for Matryoshka
    models (and then only to the lengths the model lists)."""
    refuse_unknown(body)
    dimensions = body.dimensions
    if dimensions is None:
        return Pooling()
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
    return Pooling(dimensions=dimensions)


class EmbeddingsEndpoint(Endpoint[EmbeddingBody]):
    url: ClassVar[str] = "/v1/embeddings"
    listing_order: ClassVar[int] = 30
    body_model = EmbeddingBody
    required_field: ClassVar[str] = "input"
    plain_fields: ClassVar[tuple[str, ...]] = ("input",)
    worker_kind: ClassVar = "embed"
    call: ClassVar[AnyCall] = EMBED
    generates: ClassVar[bool] = False
    example: ClassVar[dict[str, Any]] = {"model": "demo-embed", "input": ["first text", "second text"]}

    def input_token_ids(self, tokenizer: Tokenizer, body: EmbeddingBody) -> list[list[int]]:
        """The inputs as token ids, one list per input (the tokenizer adds the model's special
        tokens, as vLLM does for a text prompt)."""
        return [list(tokenizer.encode(item)) if isinstance(item, str) else list(item) for item in body.inputs()]

    def plan(self, request: Request, ctx: PlanContext) -> PoolingPlan:
        """Refuses an unknown field, `dimensions` on a model that cannot shorten its vectors, an
        empty input, a token id out of the vocabulary, an input too long for the context.
        `truncate_prompts` keeps the start of a long input, as embedding models' tokenizers
        truncate."""
        body = self.body_of(request)
        params = pooling(body, ctx.limits)
        inputs = self.input_token_ids(ctx.tokenizer, body)
        max_model_len = ctx.limits.max_model_len
        for position, ids in enumerate(inputs):
            if not ids:
                raise UnsupportedRequest(f"Input {position} is empty: give at least one token.", param="input")
            check_vocabulary(ids, ctx.limits, "input")
            if len(ids) > max_model_len:
                if ctx.defaults.truncate_prompts:
                    inputs[position] = ids[:max_model_len]
                    continue
                raise UnsupportedRequest(
                    f"This model's maximum context length is {max_model_len} tokens. However, input {position} has "
                    f"{len(ids)} tokens. Please reduce the input, or create the batch with truncate_prompts.",
                    param="input",
                    code="context_length_exceeded",
                )
        return PoolingPlan(request=request, inputs=inputs, pooling=params)

    def output_line(self, custom_id: str, body: EmbeddingBody, result: EngineEmbeddings, model: str) -> bytes:
        """Every input's vector, in input order."""
        encode = base64_vector if body.encoding_format == "base64" else None
        answer = EmbeddingList(
            data=[
                EmbeddingData(index=index, embedding=encode(vector) if encode else vector)
                for index, vector in enumerate(result.vectors)
            ],
            model=model,
            usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )
        return answer_line(custom_id, answer)
