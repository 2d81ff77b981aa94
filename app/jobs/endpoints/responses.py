"""The `/v1/responses` shape: a line's body, and the `response` object it is answered with.

A responses line is a chat in other words: `instructions` become a system message
first, `input` (a string, or a list of messages whose content is a string or
`input_text` parts) the messages after it, and the model's text comes back as one
`output_text` part of one assistant `message` in `output`. `text.format` asks for
structured output as a chat line's `response_format` does. Anything the Responses API
offers beyond that (tools, reasoning, previous_response_id, background, ...) is refused
per line, naming the field (`unsupported`).

Plain line: `{"custom_id", "input"}`, or in a responses batch `{"custom_id", "prompt"}` (the
prompt is the input). At upload, a plain `input` that is not an embeddings body is a
responses line.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.jobs.endpoints.base import JobDefaults, Tokenizer, UnsupportedRequest
from app.jobs.endpoints.generate_call import Generation, Sampling
from app.jobs.endpoints.generation import GenerationEndpoint, structured_output
from app.jobs.output_lines import answer_line

TEXT_PART_TYPES = ("input_text", "output_text")  # output_text: an earlier assistant turn, as the API returns it

# Fields of the Responses API that change nothing in an offline batch, tolerated with these
# values (None: any value); any other value, or any other field, is refused naming the field.
TOLERATED: dict[str, tuple[Any, ...] | None] = {
    "store": None,
    "service_tier": None,
    "safety_identifier": None,
    "prompt_cache_key": None,
    "parallel_tool_calls": None,  # means nothing without tools
    "stream": (False, None),
    "background": (False, None),
    "tools": ([], None),
    "tool_choice": ("auto", "none", None),
    "include": ([], None),
    "truncation": ("disabled", None),
    "reasoning": (None,),
}


class ContentPart(BaseModel):
    """One part of a message's content; only text parts can be run (`unsupported`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_parts_have_text(self) -> ContentPart:
        if self.type in TEXT_PART_TYPES and self.text is None:
            raise ValueError(f"an {self.type} part needs text")
        return self


class InputItem(BaseModel):
    """One item of `input`: a message (the only kind that can be run offline). A string
    content is read as one text part."""

    model_config = ConfigDict(extra="allow")

    type: str = "message"
    role: Literal["user", "system", "developer", "assistant"] | None = None
    content: list[ContentPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_part(cls, value: Any) -> Any:
        return [{"type": "input_text", "text": value}] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _messages_have_role_and_content(self) -> InputItem:
        if self.type == "message" and (self.role is None or self.content is None):
            raise ValueError("a message needs a role and content")
        return self

    def text(self) -> str:
        return "".join(part.text or "" for part in self.content or [])


class ResponsesBody(BaseModel):
    """A `/v1/responses` request body."""

    # Unknown fields are kept so planning can refuse each, naming it.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: list[InputItem] = Field(min_length=1)  # a string is read as one user message
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    text: dict[str, Any] | None = None  # {"format": {...}}; checked when the line is planned
    user: str | None = None  # echoed in the response object
    metadata: dict[str, str] | None = None  # likewise

    @field_validator("input", mode="before")
    @classmethod
    def _string_is_one_message(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list):
            raise ValueError("input must be a string or a list of messages")
        return value

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat messages: the instructions first, as a system message."""
        first = [{"role": "system", "content": self.instructions}] if self.instructions is not None else []
        return first + [{"role": str(item.role), "content": item.text()} for item in self.input]

    def text_format(self) -> dict[str, Any] | None:
        """`text.format`, if the line gives one."""
        return (self.text or {}).get("format")

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first thing this line asks that an offline batch cannot do."""
        for name, value in (self.model_extra or {}).items():
            allowed = TOLERATED.get(name, ())
            if name in TOLERATED and (allowed is None or value in allowed):
                continue
            return name, f"Unsupported parameter '{name}' (value {value!r}) in an offline batch."
        for name in self.text or {}:
            if name != "format":
                return f"text.{name}", f"Unsupported parameter 'text.{name}' in an offline batch."
        for i, item in enumerate(self.input):
            if item.type != "message":
                return f"input.{i}.type", f"Input items of type {item.type!r} are not supported offline."
            for j, part in enumerate(item.content or []):
                if part.type not in TEXT_PART_TYPES:
                    return (
                        f"input.{i}.content.{j}.type",
                        f"Content of type {part.type!r} is not supported: give input_text parts.",
                    )
        return None


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """A `response` object, as OpenAI's Responses API answers (what the request asked
    for echoed back, as the API does)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int
    status: Literal["completed", "incomplete"]
    incomplete_details: IncompleteDetails | None
    error: None = None
    model: str
    instructions: str | None
    output: list[OutputMessage]
    usage: ResponseUsage
    max_output_tokens: int | None  # as the line gave it (null: the batch's max_tokens applied)
    temperature: float
    top_p: float
    text: dict[str, Any]
    metadata: dict[str, Any]
    user: str | None
    parallel_tool_calls: bool = True
    tool_choice: str = "auto"
    tools: list[Any] = Field(default_factory=list)
    background: bool = False


def response_object(body: ResponsesBody, generation: Generation, model: str) -> ResponseObject:
    """The answer to one responses line: the generation's one choice as an assistant message."""
    choice = generation.choices[0]
    cut = choice.finish_reason == "length"  # planning leaves room for max_output_tokens, so this is the cause
    now = int(time.time())
    return ResponseObject(
        id=f"resp_{uuid.uuid4().hex}",
        created_at=now,
        completed_at=now,
        status="incomplete" if cut else "completed",
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if cut else None,
        model=model,
        instructions=body.instructions,
        output=[
            OutputMessage(
                id=f"msg_{uuid.uuid4().hex}",
                status="incomplete" if cut else "completed",
                content=[OutputText(text=choice.text)],
            )
        ],
        usage=ResponseUsage(
            input_tokens=generation.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=generation.cached_tokens),
            output_tokens=choice.completion_tokens,
            total_tokens=generation.prompt_tokens + choice.completion_tokens,
        ),
        max_output_tokens=body.max_output_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        text={"format": body.text_format() or {"type": "text"}},
        metadata=body.metadata or {},
        user=body.user,
    )


def _text_format_output(text_format: Any) -> dict[str, Any] | None:
    """A responses line's `text.format`, as the chat path's `response_format` maps it."""
    if text_format is None:
        return None
    if not isinstance(text_format, dict):
        raise UnsupportedRequest("text.format must be a JSON object.", param="text.format")
    kind = text_format.get("type")
    if kind in ("text", "json_object"):
        return structured_output(text_format)
    if kind != "json_schema":
        raise UnsupportedRequest(f"Unsupported text.format type {kind!r}.", param="text.format.type")
    if not isinstance(text_format.get("name"), str):
        raise UnsupportedRequest("text.format.name is required for a json_schema format.", "text.format.name")
    schema = text_format.get("schema")
    if not isinstance(schema, dict):
        raise UnsupportedRequest("text.format.schema must be a JSON object.", param="text.format.schema")
    return structured_output({"type": "json_schema", "json_schema": {"schema": schema}}, param="text.format")


class Responses(GenerationEndpoint[ResponsesBody]):
    """Planned as a chat: the same chat template, sampling and checks."""

    url: ClassVar[str] = "/v1/responses"
    listing_order: ClassVar[int] = 40
    body_model = ResponsesBody
    required_field: ClassVar[str] = "input"
    plain_fields: ClassVar[tuple[str, ...]] = ("input", "prompt")
    example: ClassVar[dict[str, Any]] = {
        "model": "demo-llama",
        "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}],
        "max_output_tokens": 16,
    }

    def plain_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if "prompt" in body and "input" not in body:
            body["input"] = body.pop("prompt")  # a plain prompt in a responses job is its input
        return body

    def looks_like(self, body: dict[str, Any]) -> bool:
        value = body.get("input")
        return isinstance(value, list) and any(isinstance(item, dict) for item in value)  # messages

    def max_tokens(self, body: ResponsesBody, defaults: JobDefaults) -> int:
        return body.max_output_tokens or defaults.max_tokens

    def sampling(self, body: ResponsesBody, defaults: JobDefaults) -> Sampling:
        unsupported = body.unsupported()
        if unsupported is not None:
            param, message = unsupported
            raise UnsupportedRequest(message, param=param)
        return Sampling(
            max_tokens=self.max_tokens(body, defaults),
            temperature=body.temperature,
            top_p=body.top_p,
            structured_outputs=_text_format_output(body.text_format()),
        )

    def prompt_token_ids(self, tokenizer: Tokenizer, body: ResponsesBody) -> list[int]:
        rendered = tokenizer.apply_chat_template(body.messages(), add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(str(rendered), add_special_tokens=False))

    def model_of(self, body: ResponsesBody) -> str | None:
        return body.model

    def line_param(self, body: ResponsesBody, engine_field: str | None) -> str | None:
        if engine_field == "structured_outputs":
            return "text.format"
        if engine_field == "max_tokens":
            return "max_output_tokens"
        return super().line_param(body, engine_field)

    def cap_output(self, body: dict[str, Any], max_tokens: int) -> None:
        body["max_output_tokens"] = max_tokens

    def packing_prompt(self, body: ResponsesBody) -> str:
        return "".join(f"{m['role']}\n{m['content']}\n" for m in body.messages())

    def output_line(self, custom_id: str, body: ResponsesBody, result: Generation, model: str) -> bytes:
        """The generation's one choice as an assistant message."""
        return answer_line(custom_id, response_object(body, result, body.model or model))
