"""A window of lines as the shard runner carries it: planned for the engine, then generated.

A window is one static batch, or (length-aware packing) several run in the order of
worker.packing; either way it is recorded as one unit.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from app.jobs.endpoints.base import EngineCall, GenerationPlan, Plan, Pooling, PoolingPlan, Sampling
from app.jobs.lines import Request
from app.jobs.output_lines import EngineResult, request_error_line
from app.jobs.planning import line_param
from app.jobs.telemetry import EngineTelemetry
from worker.engine import RequestRejected


@dataclass
class PreparedWindow:
    """A window's lines, ready for the engine (runnable, or answered as error lines)."""

    seq: int
    first_line: int
    next_line: int
    # The engine call its lines take (its endpoint's `engine_call`): generate (`prompts` and
    # `sampling`), embed (`inputs` and `pooling`), or score (`pairs` and `pair_tokens`).
    call: EngineCall = "generate"
    runnable: list[Request] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    sampling: list[Sampling] = field(default_factory=list)
    inputs: list[list[list[int]]] = field(default_factory=list)  # each line's inputs
    pooling: list[Pooling] = field(default_factory=list)
    pairs: list[list[tuple[str, str]]] = field(default_factory=list)  # each line's text pairs
    pair_tokens: list[int] = field(default_factory=list)  # each line's tokens over its pairs
    # Lines answered without the engine, keyed by input index.
    errors: dict[int, bytes] = field(default_factory=dict)
    # A packed generation window: its static batches in the order they run, each planned
    # (tokenized) on the preparer while the one before it generates; `runnable` fills as they run.
    planned: list[Future[PreparedWindow]] = field(default_factory=list)

    def add(self, plan: Plan) -> None:
        """A planned line, runnable."""
        self.runnable.append(plan.request)
        if isinstance(plan, GenerationPlan):
            self.prompts.append(plan.prompt)
            self.sampling.append(plan.sampling)
        elif isinstance(plan, PoolingPlan):
            self.inputs.append(plan.inputs)
            self.pooling.append(plan.pooling)
        else:
            self.pairs.append(plan.pairs)
            self.pair_tokens.append(plan.prompt_tokens)

    def length(self, position: int) -> tuple[int, int]:
        """What the engine's work on a runnable line grows with, to sort a packed window by."""
        if self.call == "embed":
            return 0, sum(len(ids) for ids in self.inputs[position])
        if self.call == "score":
            return 0, self.pair_tokens[position]
        return self.sampling[position].max_tokens, len(self.prompts[position])

    def drop(self, position: int) -> Request:
        """Takes a runnable line out of the window."""
        if self.call == "embed":
            del self.inputs[position], self.pooling[position]
        elif self.call == "score":
            del self.pairs[position], self.pair_tokens[position]
        else:
            del self.prompts[position], self.sampling[position]
        return self.runnable.pop(position)

    def clear(self) -> None:
        """Takes every runnable line out (they were answered otherwise)."""
        self.runnable, self.prompts, self.sampling, self.inputs, self.pooling = [], [], [], [], []
        self.pairs, self.pair_tokens = [], []


@dataclass(frozen=True)
class Generated:
    """What the engine made of one window, in input order."""

    generations: list[EngineResult]
    telemetry: EngineTelemetry | None
    static_batches: int  # generate (or embed) calls


def merge_parts(window: PreparedWindow, parts: list[tuple[PreparedWindow, list[EngineResult]]]) -> list[EngineResult]:
    """Puts the static batches' lines (and their error lines) back into their window, in
    input order; the generations in that order."""
    rows: list[tuple[Request, list[int], Sampling, EngineResult]] = []
    for part, generations in parts:
        rows += zip(part.runnable, part.prompts, part.sampling, generations, strict=True)
        if part is not window:
            window.errors.update(part.errors)
    rows.sort(key=lambda row: row[0].index)
    window.runnable = [request for request, _, _, _ in rows]
    window.prompts = [prompt for _, prompt, _, _ in rows]
    window.sampling = [sampling for _, _, sampling, _ in rows]
    return [generation for *_, generation in rows]


def set_refused_aside(window: PreparedWindow, refused: dict[int, RequestRejected]) -> None:
    """Moves the requests the engine refused (by position) to the window's error lines."""
    for position in sorted(refused, reverse=True):
        request = window.drop(position)
        refusal = refused[position]
        message = f"The engine refused this request: {refusal}"
        param = line_param(request, refusal.field)
        window.errors[request.index] = request_error_line(request.custom_id, message, param, "invalid_request")
