"""`/v1/score`: a similarity score per (text_1, text_2) pair, all in one output line, from a
worker of kind `embed` (EMBEDDING_MODEL, one `LLM.score` per static batch: every pair of every
line in one N -> N call). vLLM scores with a cross-encoder when the model is one, and by the
cosine similarity of the two texts' embeddings (a bi-encoder) otherwise, as on the demo model.

Body as vLLM's: `text_1` and `text_2` (or `queries` and `documents`), each a string or a list
of strings, paired 1 -> 1, 1 -> N or N -> N. Plain line: `{"custom_id", "text_1", "text_2"}`.
Also the pairs' planning, which `/v1/rerank` (app.jobs.endpoints.rerank) shares.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from app.jobs.endpoints.base import Endpoint, PlanContext, Tokenizer, UnsupportedRequest, refuse_unknown
from app.jobs.endpoints.call import AnyCall
from app.jobs.endpoints.score_call import SCORE_CALL, Scores, ScoringPlan
from app.jobs.output_lines import answer_line

if TYPE_CHECKING:
    from app.jobs.lines import Request

MAX_SCORE_TEXTS = 2048  # texts on either side of one request, as embeddings' inputs


def text_list(value: Any, name: str) -> Any:
    """A string, or a list of 1 to MAX_SCORE_TEXTS strings."""
    if isinstance(value, str):
        return value
    if not (isinstance(value, list) and 0 < len(value) <= MAX_SCORE_TEXTS and all(isinstance(v, str) for v in value)):
        raise ValueError(f"{name} must be a string or a list of 1 to {MAX_SCORE_TEXTS} strings")
    return value


class ScoreBody(BaseModel):
    """A score request: one score per pair, all in one output line."""

    # Unknown fields are refused per line, naming them.
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str | None = None
    text_1: str | list[str] = Field(validation_alias=AliasChoices("text_1", "queries"))
    text_2: str | list[str] = Field(validation_alias=AliasChoices("text_2", "documents"))
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_name_each(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, alias in (("text_1", "queries"), ("text_2", "documents")):
                if name in value and alias in value:
                    raise ValueError(f"give {name} or {alias}, not both")
        return value

    @field_validator("text_1", "text_2", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        return text_list(value, "text_1 and text_2")

    @model_validator(mode="after")
    def _pairing(self) -> ScoreBody:
        first, second = self.texts()
        if len(first) > 1 and len(first) != len(second):
            raise ValueError(
                f"text_1 has {len(first)} texts and text_2 {len(second)}: pair them 1 -> 1, 1 -> N or N -> N"
            )
        return self

    def texts(self) -> tuple[list[str], list[str]]:
        """Both sides as lists (a single string is one text)."""
        first, second = self.text_1, self.text_2
        return ([first] if isinstance(first, str) else list(first)), (
            [second] if isinstance(second, str) else list(second)
        )


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreList(BaseModel):
    """A score response, as vLLM's API answers."""

    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


def texts_token_ids(tokenizer: Tokenizer, first: list[str], second: list[str]) -> list[list[int]]:
    """Every text as token ids, `first` then `second` (with the model's special tokens, as
    vLLM tokenizes a text prompt)."""
    return [list(tokenizer.encode(text)) for text in [*first, *second]]


def plan_pairs(
    request: Request, body: BaseModel, texts: tuple[list[str], list[str]], ctx: PlanContext, params: tuple[str, str]
) -> ScoringPlan:
    """A score or rerank line's pairs (the first side repeated when it holds one text), with
    their tokens. Refuses an unknown field and a text longer than the model's context (each
    text is read on its own by a bi-encoder; `truncate_prompts` does not apply to pairs)."""
    refuse_unknown(body)
    first, second = texts
    ids = request.kind.input_token_ids(ctx.tokenizer, body)
    max_model_len = ctx.limits.max_model_len
    for position, text_ids in enumerate(ids):
        side, at = (0, position) if position < len(first) else (1, position - len(first))
        if len(text_ids) > max_model_len:
            raise UnsupportedRequest(
                f"This model's maximum context length is {max_model_len} tokens. However, {params[side]} {at} has "
                f"{len(text_ids)} tokens. Please shorten it.",
                param=params[side],
                code="context_length_exceeded",
            )
    lengths_1, lengths_2 = [len(i) for i in ids[: len(first)]], [len(i) for i in ids[len(first) :]]
    if len(first) == 1:
        first, lengths_1 = first * len(second), lengths_1 * len(second)
    return ScoringPlan(
        request=request, pairs=list(zip(first, second, strict=True)), prompt_tokens=sum(lengths_1) + sum(lengths_2)
    )


class ScoreEndpoint(Endpoint[ScoreBody]):
    url: ClassVar[str] = "/v1/score"
    listing_order: ClassVar[int] = 50
    body_model = ScoreBody
    required_field: ClassVar[str] = "text_1"
    required_aliases: ClassVar[tuple[str, ...]] = ("queries",)
    plain_fields: ClassVar[tuple[str, ...]] = ("text_1",)
    worker_kind: ClassVar = "embed"
    call: ClassVar[AnyCall] = SCORE_CALL
    generates: ClassVar[bool] = False
    example: ClassVar[dict[str, Any]] = {
        "model": "demo-embed",
        "text_1": "What is the capital of France?",
        "text_2": ["Paris is the capital of France.", "The Nile is a river."],
    }

    def input_token_ids(self, tokenizer: Tokenizer, body: ScoreBody) -> list[list[int]]:
        return texts_token_ids(tokenizer, *body.texts())

    def plan(self, request: Request, ctx: PlanContext) -> ScoringPlan:
        body = self.body_of(request)
        return plan_pairs(request, body, body.texts(), ctx, ("text_1", "text_2"))

    def output_line(self, custom_id: str, body: ScoreBody, result: Scores, model: str) -> bytes:
        """Every pair's score, in pair order."""
        answer = ScoreList(
            id=f"score-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model,
            data=[ScoreData(index=index, score=score) for index, score in enumerate(result.scores)],
            usage=ScoreUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        )
        return answer_line(custom_id, answer)
