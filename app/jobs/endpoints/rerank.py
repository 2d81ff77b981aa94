"""`/v1/rerank`: the documents ranked by their score against one query, from a worker of kind
`embed` (the pairs run in `LLM.score`, as `/v1/score`'s: app.jobs.endpoints.score).

Body as vLLM's: `query` (a string), `documents` (a list of strings), `top_n` (0 or absent:
all) and `return_documents` (default true). Plain line: `{"custom_id", "query", "documents"}`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer
from pydantic_core.core_schema import SerializerFunctionWrapHandler

from app.jobs.endpoints.base import Endpoint, PlanContext, Tokenizer
from app.jobs.endpoints.call import AnyCall
from app.jobs.endpoints.score import MAX_SCORE_TEXTS, ScoreUsage, plan_pairs, texts_token_ids
from app.jobs.endpoints.score_call import SCORE_CALL, Scores, ScoringPlan
from app.jobs.output_lines import answer_line

if TYPE_CHECKING:
    from app.jobs.lines import Request


class RerankBody(BaseModel):
    """A rerank request: one query, the documents to rank against it."""

    model_config = ConfigDict(extra="allow")  # unknown fields are refused per line, naming them

    model: str | None = None
    query: str
    documents: list[str]
    top_n: int = Field(default=0, ge=0)  # 0: every document
    return_documents: bool = True
    user: str | None = None

    @field_validator("documents", mode="before")
    @classmethod
    def _documents(cls, value: Any) -> Any:
        if not (
            isinstance(value, list) and 0 < len(value) <= MAX_SCORE_TEXTS and all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"documents must be a list of 1 to {MAX_SCORE_TEXTS} strings")
        return value


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument | None = None  # only with return_documents
    relevance_score: float

    @model_serializer(mode="wrap")
    def _without_missing_document(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if self.document is None:
            dumped.pop("document", None)
        return dumped


class RerankResponse(BaseModel):
    """A rerank response, as vLLM's API answers: the best first, cut to top_n."""

    id: str
    model: str
    usage: ScoreUsage
    results: list[RerankResult]


class RerankEndpoint(Endpoint[RerankBody]):
    url: ClassVar[str] = "/v1/rerank"
    listing_order: ClassVar[int] = 60
    body_model = RerankBody
    required_field: ClassVar[str] = "query"
    plain_fields: ClassVar[tuple[str, ...]] = ("query",)
    worker_kind: ClassVar = "embed"
    call: ClassVar[AnyCall] = SCORE_CALL
    generates: ClassVar[bool] = False
    example: ClassVar[dict[str, Any]] = {
        "model": "demo-embed",
        "query": "What is the capital of France?",
        "documents": ["The Nile is a river.", "Paris is the capital of France."],
        "top_n": 1,
    }

    def input_token_ids(self, tokenizer: Tokenizer, body: RerankBody) -> list[list[int]]:
        return texts_token_ids(tokenizer, [body.query], body.documents)

    def plan(self, request: Request, ctx: PlanContext) -> ScoringPlan:
        body = self.body_of(request)
        return plan_pairs(request, body, ([body.query], body.documents), ctx, ("query", "documents"))

    def output_line(self, custom_id: str, body: RerankBody, result: Scores, model: str) -> bytes:
        """The documents by relevance, best first (ties in document order), the first top_n."""
        results = [
            RerankResult(
                index=index,
                document=RerankDocument(text=body.documents[index]) if body.return_documents else None,
                relevance_score=score,
            )
            for index, score in enumerate(result.scores)
        ]
        results.sort(key=lambda item: item.relevance_score, reverse=True)
        if body.top_n:
            results = results[: body.top_n]
        answer = RerankResponse(
            id=f"rerank-{uuid.uuid4().hex}",
            model=model,
            usage=ScoreUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
            results=results,
        )
        return answer_line(custom_id, answer)
