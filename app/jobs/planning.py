"""Request planning: from one input line to what the engine runs, the one path the worker and
a dry run (and an estimate) share.

Parse the line, then its kind (`app.jobs.endpoints`) plans it with the model's tokenizer: a
generation line becomes its prompt as token ids (chat template applied) checked against the
context, and a typed `Sampling`; an embeddings line one token-id list per input and a
`Pooling`. The kind tokenizes its own lines (`Endpoint.prompt_token_ids`); nothing asks the
engine to. A dry run plans
every line this way on the same model's tokenizer, so what a dry run calls failing is what
would fail, and both count the same tokens. Only what the engine alone can tell (a JSON
schema its structured-output backend cannot compile, say) waits for the worker's engine
check; `line_param` names the line's field then.
"""

from __future__ import annotations

from app.jobs.endpoints.base import PlanContext, Tokenizer
from app.jobs.endpoints.call import LinePlan
from app.jobs.lines import Request, parse_line


def prompt_token_ids(request: Request, tokenizer: Tokenizer) -> list[int]:
    """A generation line's prompt as the model sees it (its kind renders and tokenizes it)."""
    return request.kind.prompt_token_ids(tokenizer, request.body)


def plan_request(raw: bytes, index: int, endpoint: str, ctx: PlanContext) -> LinePlan:
    """Raises LineError for a line that breaks the format, UnsupportedRequest for one the
    model cannot serve (each kind's `plan` says what it refuses)."""
    return plan_parsed(parse_line(raw, index, endpoint), ctx)


def plan_parsed(request: Request, ctx: PlanContext) -> LinePlan:
    """`plan_request` for a line already parsed (the worker parses a packed window's lines
    first, to order them before tokenizing)."""
    return request.kind.plan(request, ctx)


def line_param(request: Request, engine_field: str | None) -> str | None:
    """The field of a line's body that an engine parameter (a `SamplingParams` or
    `PoolingParams` field, as vLLM names the one it refuses) comes from, to name in the
    line's error; None when the line has no such field."""
    return request.kind.line_param(request.body, engine_field)
