"""The `score` engine call (`LLM.score`): a line's (text_1, text_2) pairs in, one score per
pair out (`Scores`). The score and rerank kinds run on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from app.jobs.endpoints.call import EngineCall

if TYPE_CHECKING:
    from app.jobs.lines import Request


@dataclass(frozen=True)
class ScoringPlan:
    """A line the engine scores: its (text_1, text_2) pairs, 1 -> N expanded to N -> N, and
    the tokens the model reads for them (both texts of every pair)."""

    request: Request
    pairs: list[tuple[str, str]]
    prompt_tokens: int


@dataclass(frozen=True)
class Scores:
    """What the engine made of one score or rerank request: one score per pair, in order."""

    prompt_tokens: int  # over all its pairs
    scores: list[float]
    completion_tokens: int = 0  # nothing is generated
    cached_tokens: int = 0  # no prefix cache counts for scoring


class Scorer(Protocol):
    """The engine method scoring runs on (`worker.engine.VllmEngine`)."""

    def score(self, pairs: list[list[tuple[str, str]]]) -> list[Scores]: ...


class ScoreCall(EngineCall[ScoringPlan, Scores, Scorer]):
    name: ClassVar[str] = "score"
    plan_type: ClassVar[type] = ScoringPlan
    result_type: ClassVar[type] = Scores

    def run(self, engine: Scorer, plans: list[ScoringPlan]) -> list[Scores]:
        return engine.score([plan.pairs for plan in plans])

    def length(self, plan: ScoringPlan) -> tuple[int, int]:
        return 0, plan.prompt_tokens

    def token_counts(self, plan: ScoringPlan) -> tuple[int, int]:
        return plan.prompt_tokens, 0


SCORE_CALL = ScoreCall()
