"""What an engine call is: the engine method a kind's lines run on, as one plug-in.

An `EngineCall` owns the plan type its lines are planned into and the result type the engine
makes of each. It says how the engine checks a plan before its line joins a static batch, how
one static batch of plans runs (`run`: one blocking engine call; `enqueue`: into the running
engine, for a call whose static batches overlap), what the engine's work on a plan grows with
(to sort a packed window by), what a plan counts in an estimate, and what a static batch's
results say of the engine. An endpoint names its call (`Endpoint.call`); a window is a list of
plans of one call. The worker asks the call and never tests a plan's or a result's type
(tests/unit/test_endpoints.py scans for it).

Adding an engine call is one module in this package (its plan, result, call and the endpoint
that uses it) and the engine method it calls on `worker.engine.VllmEngine`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from app.data.json_values import EngineTelemetry
    from app.jobs.lines import Request


class LinePlan(Protocol):
    """A line planned for the engine: each call's plan type has its request."""

    @property
    def request(self) -> Request: ...


class LineResult(Protocol):
    """What the engine made of one line: each call's result type counts these."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...


P = TypeVar("P")
R = TypeVar("R")
E = TypeVar("E")  # the engine surface the call needs (a Protocol in the call's module)


class EngineCall(ABC, Generic[P, R, E]):
    name: ClassVar[str]  # the engine method, for messages and the dashboard
    plan_type: ClassVar[type]  # what its lines are planned into
    result_type: ClassVar[type]  # what the engine makes of each
    # Its static batches can enter the running engine (`enqueue`, then the engine's steps),
    # overlapping and shared with other shards' (worker.overlap, worker.sharing).
    overlaps: ClassVar[bool] = False
    # A packed window of it is ordered from its parsed lines (worker.packing) and planned one
    # static batch at a time; otherwise a window is planned whole and sorted by `length`.
    packs_parsed_lines: ClassVar[bool] = False

    def check(self, engine: E, plan: P) -> None:
        """Raises the engine's refusal (`worker.engine.RequestRejected`) of a plan, before
        its line joins a static batch (one refused request fails a whole engine call)."""

    @abstractmethod
    def run(self, engine: E, plans: list[P]) -> Sequence[R]:
        """One static batch: every plan in one blocking engine call, results in order."""

    def enqueue(self, engine: E, plans: list[P], priority: int) -> list[str]:
        """Adds a static batch to the running engine; its request ids (overlapping calls)."""
        raise TypeError(f"static batches of {self.name} do not overlap")

    def prefix(self, plan: P) -> list[int]:
        """The token ids the engine's prefix cache sees first (overlapping calls)."""
        return []

    @abstractmethod
    def length(self, plan: P) -> tuple[int, int]:
        """What the engine's work on a plan grows with, to sort a packed window by."""

    @abstractmethod
    def token_counts(self, plan: P) -> tuple[int, int]:
        """(prompt tokens, output tokens asked for) of a plan, for the estimate."""

    def telemetry(self, results: Sequence[R], kv_cache_tokens: int | None) -> EngineTelemetry | None:
        """What one static batch's results say of the engine (None: they carry no timings)."""
        return None

    def output_lengths(self, results: Sequence[R]) -> list[int]:
        """Each result's output tokens, for the window's length histogram (none: a call
        that generates nothing)."""
        return []


AnyCall = EngineCall[Any, Any, Any]
