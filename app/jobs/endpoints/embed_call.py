"""The `embed` engine call (`LLM.embed`): a line's inputs as token-id lists and its `Pooling`
in, one vector per input out (`Embeddings`). The embeddings kind runs on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from app.jobs.endpoints.call import EngineCall

if TYPE_CHECKING:
    from app.jobs.lines import Request


@dataclass(frozen=True)
class Pooling:
    """An embeddings line's `PoolingParams` fields (None: the model's default)."""

    dimensions: int | None = None

    def engine_kwargs(self) -> dict[str, Any]:
        return {} if self.dimensions is None else {"dimensions": self.dimensions}


@dataclass(frozen=True)
class PoolingPlan:
    """A line the engine pools: one token-id list per input (truncated if the batch asks),
    and the pooling parameters every input shares."""

    request: Request
    inputs: list[list[int]]
    pooling: Pooling = field(default_factory=Pooling)


@dataclass(frozen=True)
class Embeddings:
    """What the engine made of one embeddings request: one vector per input, in order."""

    prompt_tokens: int  # over all its inputs
    vectors: list[list[float]]
    completion_tokens: int = 0  # nothing is generated
    cached_tokens: int = 0  # no prefix cache counts for pooling


class Embedder(Protocol):
    """The engine methods embeddings run on (`worker.engine.VllmEngine`)."""

    def check_pooling(self, pooling: Pooling) -> None: ...

    def embed(self, inputs: list[list[list[int]]], pooling: list[Pooling]) -> list[Embeddings]: ...


class EmbedCall(EngineCall[PoolingPlan, Embeddings, Embedder]):
    name: ClassVar[str] = "embed"
    plan_type: ClassVar[type] = PoolingPlan
    result_type: ClassVar[type] = Embeddings

    def check(self, engine: Embedder, plan: PoolingPlan) -> None:
        engine.check_pooling(plan.pooling)

    def run(self, engine: Embedder, plans: list[PoolingPlan]) -> list[Embeddings]:
        return engine.embed([plan.inputs for plan in plans], [plan.pooling for plan in plans])

    def length(self, plan: PoolingPlan) -> tuple[int, int]:
        return 0, sum(len(ids) for ids in plan.inputs)

    def token_counts(self, plan: PoolingPlan) -> tuple[int, int]:
        return sum(len(ids) for ids in plan.inputs), 0


EMBED = EmbedCall()
