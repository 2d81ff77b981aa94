"""A window of lines as the shard runner carries it: planned for the engine, then run.

A window is one static batch, or (length-aware packing) several run in the order of
worker.packing; either way it is recorded as one unit. `PlannedLines` are lines planned for
the engine, a static batch's or a window's; a `PreparedWindow` is a window's. Its lines are plans of one engine
call (its endpoint's `call`), which says how they run; nothing here asks a plan's type.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.data.json_values import EngineTelemetry
from app.jobs.endpoints.call import AnyCall
from app.jobs.lines import Request
from app.jobs.output_lines import request_error_line
from app.jobs.planning import line_param
from worker.engine import RequestRejected


@dataclass(kw_only=True)
class PlannedLines:
    """Lines of one engine call planned for the engine, a static batch's or a whole window's:
    the runnable ones as plans (the call's plan type), and those answered without the engine."""

    call: AnyCall  # the engine call its lines run on
    plans: list[Any] = field(default_factory=list)
    # Lines answered without the engine, keyed by input index.
    errors: dict[int, bytes] = field(default_factory=dict)

    @property
    def runnable(self) -> list[Request]:
        return [plan.request for plan in self.plans]

    def add(self, plan: Any) -> None:
        """A planned line, runnable."""
        self.plans.append(plan)

    def length(self, position: int) -> tuple[int, int]:
        """What the engine's work on a runnable line grows with, to sort a packed window by."""
        return self.call.length(self.plans[position])

    def drop(self, position: int) -> Request:
        """Takes a runnable line out."""
        request: Request = self.plans.pop(position).request
        return request

    def clear(self) -> None:
        """Takes every runnable line out (they were answered otherwise)."""
        self.plans = []


@dataclass(kw_only=True)
class PreparedWindow(PlannedLines):
    """A window (lines `first_line` to `next_line`, recorded as one unit), planned. A packed
    window's static batches are planned one by one on the preparer while the one before it
    runs (`planned`); their plans join the window's, in input order, once they have run."""

    seq: int
    first_line: int
    next_line: int
    planned: list[Future[PlannedLines]] = field(default_factory=list)


@dataclass(frozen=True)
class Generated:
    """What the engine made of one window, in input order (the call's result type)."""

    generations: list[Any]
    telemetry: EngineTelemetry | None
    static_batches: int  # engine calls (or overlapped static batches)


def merge_parts(window: PreparedWindow, parts: list[tuple[PlannedLines, list[Any]]]) -> list[Any]:
    """Puts the static batches' lines (and their error lines) back into their window, in
    input order; the results in that order."""
    rows: list[tuple[Any, Any]] = []
    for part, results in parts:
        rows += zip(part.plans, results, strict=True)
        if part is not window:
            window.errors.update(part.errors)
    rows.sort(key=lambda row: row[0].request.index)
    window.plans = [plan for plan, _ in rows]
    return [result for _, result in rows]


def set_refused_aside(lines: PlannedLines, refused: dict[int, RequestRejected]) -> None:
    """Moves the requests the engine refused (by position) to the lines' error lines."""
    for position in sorted(refused, reverse=True):
        request = lines.drop(position)
        refusal = refused[position]
        message = f"The engine refused this request: {refusal}"
        param = line_param(request, refusal.field)
        lines.errors[request.index] = request_error_line(request.custom_id, message, param, "invalid_request")
