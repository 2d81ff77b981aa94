"""What every endpoint kind implements (`Endpoint`): its body, how a line of it is planned
for its engine call (`Endpoint.call`, app.jobs.endpoints.call) and how its answer is written.
Also the limits and defaults a line is planned against, and the refusal (`UnsupportedRequest`)
that makes a line one error line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel

from app.core.settings import Settings, WorkerKind
from app.data.json_values import JobDefaults
from app.jobs.endpoints.call import AnyCall, LinePlan

if TYPE_CHECKING:
    from app.jobs.lines import Request

SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's int64; a larger seed crashes the engine's random generator
# Fields that change nothing in an offline batch, accepted with these values (None: any value).
TOLERATED: dict[str, tuple[Any, ...] | None] = {
    "stream": (False, None),
    "user": None,
    "store": None,
    "service_tier": None,
}


class UnsupportedRequest(ValueError):
    """A well-formed request this service cannot honour; it becomes one error line."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


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


class Tokenizer(Protocol):
    """The model's tokenizer as planning uses it (a Hugging Face tokenizer: the one the
    worker's engine holds, or the model's files for an estimate). Each kind tokenizes its own
    lines with it (`Endpoint.prompt_token_ids`, `input_token_ids`)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PlanContext:
    """What a line is planned against: the job's defaults, the model's limits, its tokenizer,
    and the names a line's `model` may give (None: any, unchecked)."""

    defaults: JobDefaults
    limits: ModelLimits
    tokenizer: Tokenizer
    models: ServedModels | None = None


def refuse_unknown(body: BaseModel, tolerated: dict[str, tuple[Any, ...] | None] = TOLERATED) -> None:
    """Refuses the first field the body model does not know (kept as an extra), naming it."""
    for name, value in (body.model_extra or {}).items():
        allowed = tolerated.get(name, ())
        if name in tolerated and (allowed is None or value in allowed):
            continue
        raise UnsupportedRequest(f"Unsupported parameter '{name}' (value {value!r}) in an offline batch.", param=name)


def check_vocabulary(ids: list[int], limits: ModelLimits, param: str) -> None:
    outside = [token for token in ids if not 0 <= token < limits.vocab_size]
    if outside:
        raise UnsupportedRequest(
            f"Token id {outside[0]} is out of vocabulary: this model's token ids run from 0 to "
            f"{limits.vocab_size - 1}.",
            param=param,
            code="invalid_token_id",
        )


B = TypeVar("B", bound=BaseModel)


class Endpoint(ABC, Generic[B]):
    """One endpoint kind (`/v1/...`): everything the service knows about it. The registry
    (`app.jobs.endpoints.ENDPOINTS`) holds one instance of each; nothing outside this
    package compares endpoint URLs or body classes."""

    url: ClassVar[str]
    listing_order: ClassVar[int] = 100  # where the registry (and errors) list it
    body_model: type[B]  # the one definition of its body: upload check, dry run, estimate and worker
    # The field a body must have, and the fields a plain line (no url and body) of this kind
    # may give in its stead, its own first (a plain prompt is a chat's one user message).
    required_field: ClassVar[str]
    required_aliases: ClassVar[tuple[str, ...]] = ()  # other names the body may give it by
    plain_fields: ClassVar[tuple[str, ...]]
    worker_kind: ClassVar[WorkerKind]  # which worker's engine serves it (`Settings.worker_kind`)
    call: ClassVar[AnyCall]  # the engine call its lines run on
    generates: ClassVar[bool]  # its lines ask for output tokens (`max_tokens`); False: input is only read
    example: ClassVar[dict[str, Any]]  # a documented body, as the README shows it

    def body_of(self, request: Request) -> B:
        """The request's body as this kind's model (parse_line gives each line its endpoint's)."""
        if not isinstance(request.body, self.body_model):
            raise UnsupportedRequest(f"A {request.endpoint} request on a batch for {self.url}.", self.required_field)
        return request.body

    def plain_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """A plain line's fields (custom_id removed) as this kind's body."""
        return body

    def looks_like(self, body: dict[str, Any]) -> bool:
        """At upload, for a plain line that no kind sharing its field parses: whether it
        looks meant for this kind (the kind whose error names the line's mistake)."""
        return False

    def served_model(self, settings: Settings) -> str:
        """The model name a job of this kind runs on: what its worker kind holds."""
        return settings.embedding_model_name if self.worker_kind == "embed" else settings.model_name

    def model_files(self, settings: Settings) -> tuple[str, int | None]:
        """The model folder (or id) its worker kind loads, and the configured context length."""
        if self.worker_kind == "embed":
            return settings.embedding_model, settings.embedding_max_model_len
        return settings.model, settings.max_model_len

    def accepts_adapters(self) -> bool:
        """Whether a line's `model` may name a LoRA adapter (generation engines hold them)."""
        return self.worker_kind == "generate"

    def prompt_token_ids(self, tokenizer: Tokenizer, body: B) -> list[int]:
        """A generation line's prompt as the model sees it (chat template applied)."""
        raise UnsupportedRequest(f"A {self.url} request has no prompt to generate from.", self.required_field)

    def input_token_ids(self, tokenizer: Tokenizer, body: B) -> list[list[int]]:
        """A pooling line's inputs as the model sees them, one list per input."""
        raise UnsupportedRequest(f"A {self.url} request has no inputs to pool.", self.required_field)

    @abstractmethod
    def plan(self, request: Request, ctx: PlanContext) -> LinePlan:
        """The line as the engine runs it; UnsupportedRequest for what the model cannot serve."""

    def token_counts(self, plan: LinePlan) -> tuple[int, int]:
        """(prompt tokens, requested output tokens) of a planned line, for the estimate."""
        return self.call.token_counts(plan)

    def line_param(self, body: B, engine_field: str | None) -> str | None:
        """The body field an engine parameter (a `SamplingParams` or `PoolingParams` field,
        as vLLM names the one it refuses) comes from, to name in the line's error."""
        if engine_field is not None and engine_field in type(body).model_fields:
            return engine_field
        return None

    def max_tokens(self, body: B, defaults: JobDefaults) -> int:
        """Output tokens a line asks for, per choice (0: it generates nothing)."""
        return 0

    def cap_output(self, body: dict[str, Any], max_tokens: int) -> None:
        """Sets the output cap of a raw body (a retry's max_tokens override, for kinds that generate)."""
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = max_tokens

    def packing_prompt(self, body: B) -> str | list[int] | None:
        """What a generation line's prompt says before it is tokenized (its text, or its token
        ids), for length-aware packing; None for a line that is not packed."""
        return None

    @abstractmethod
    def output_line(self, custom_id: str, body: B, result: Any, model: str) -> bytes:
        """The output line of a line that ran; `result` is what its call's engine method made
        of it (the call's `result_type`), `model` the served model's name."""
