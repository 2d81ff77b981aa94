"""Strict static batches: one blocking engine call (the window's `call.run`) per static batch.

Each call waits for its slowest answer before the next static batch starts: the seed's
static batching, kept as `batching: "strict"` and as the path of every engine call whose
static batches do not overlap (embeddings, scoring, loglikelihood: vLLM's `LLM.enqueue`
serves generation only). A request the engine refuses is found by splitting
the static batch in halves until it stands alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from app.data.json_values import EngineTelemetry
from app.jobs.telemetry import combine
from worker.engine import Engine, RequestRejected
from worker.windows import Generated, PlannedLines, PreparedWindow, merge_parts, set_refused_aside

log = logging.getLogger(__name__)


class StrictBatches:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def generate(self, window: PreparedWindow, batch_size: int) -> Generated:
        """One `generate` per static batch of `batch_size`. A packed window (more lines than
        one batch) runs as static batches of similar requested length, so short answers do
        not wait for long ones; the generations come back in input order."""
        if window.planned:
            return self._generate_planned(window)
        count = len(window.plans)
        if count <= batch_size:
            groups = [list(range(count))] if count else []
        else:  # a window of a call that packs by length here (embeddings, say), by its lines' tokens
            order = sorted(range(count), key=window.length)
            groups = [order[start : start + batch_size] for start in range(0, count, batch_size)]
        generations, telemetry = self._run_groups(window, groups)
        return Generated(generations, combine(telemetry), len(telemetry))

    def _generate_planned(self, window: PreparedWindow) -> Generated:
        """Runs a packed window's static batches as each is planned, then puts the window's
        runnable lines and their generations back in input order."""
        parts: list[tuple[PlannedLines, list[Any]]] = []
        telemetry: list[EngineTelemetry | None] = []
        for planned in window.planned:
            part = planned.result()
            generations, part_telemetry = self._run_groups(part, [list(range(len(part.plans)))])
            parts.append((part, generations))
            telemetry += part_telemetry
        window.planned = []
        return Generated(merge_parts(window, parts), combine(telemetry), len(telemetry))

    def _run_groups(
        self, window: PlannedLines, groups: list[list[int]]
    ) -> tuple[list[Any], list[EngineTelemetry | None]]:
        """Runs each group of the window's positions as a static batch: the generations in the
        window's order (the engine's refusals moved to its error lines), each batch's telemetry."""
        in_order: list[Any] = [None] * len(window.plans)
        refused: dict[int, RequestRejected] = {}
        telemetry: list[EngineTelemetry | None] = []
        for group in groups:
            for positions, outcome in self._static_batches(window, group):
                if isinstance(outcome, RequestRejected):
                    refused[positions[0]] = outcome
                    continue
                results = list(outcome)
                for position, result in zip(positions, results, strict=True):
                    in_order[position] = result
                telemetry.append(window.call.telemetry(results, self.engine.kv_cache_tokens))
        set_refused_aside(window, refused)
        return [g for g in in_order if g is not None], telemetry

    def _run_static_batch(self, window: PlannedLines, positions: list[int]) -> Sequence[Any]:
        """One engine call for the window's requests at `positions`."""
        return window.call.run(self.engine, [window.plans[i] for i in positions])

    def _static_batches(
        self, window: PlannedLines, positions: list[int]
    ) -> Iterator[tuple[list[int], Sequence[Any] | RequestRejected]]:
        """Runs the window's requests at `positions` as one static batch. When the engine
        refuses a request, the batch is split in two and each half run again, until the
        refused request stands alone: it gets the engine's reason, the rest run."""
        try:
            generated = self._run_static_batch(window, positions)
        except RequestRejected as refusal:
            if len(positions) == 1:
                yield positions, refusal
                return
            log.warning("the engine refused a request among %d; splitting the static batch", len(positions))
            middle = len(positions) // 2
            yield from self._static_batches(window, positions[:middle])
            yield from self._static_batches(window, positions[middle:])
            return
        yield positions, generated
