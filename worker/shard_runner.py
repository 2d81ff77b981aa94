"""Runs one claimed shard as static batches.

Three stages overlap so the engine never waits on I/O: while batch k is in
`generate`, a thread prepares batch k+1 (reading, parsing, tokenizing) and another
writes batch k-1's results to storage and its progress to Postgres. A packed window is
ordered from its parsed lines (worker.packing) and tokenized one static batch at a time,
so its first `generate` starts without waiting for the whole window's tokens. An embeddings
shard runs the same way, each static batch of `batch_size` lines in one `embed` call.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from app.core.backoff import retry_transient
from app.core.storage import ObjectStore
from app.data.claims import ClaimedShard
from app.data.models import JobStatus
from app.data.queue import JobQueue, WindowResult
from app.jobs.lines import EMBEDDINGS, LineError, Request, parse_line
from app.jobs.output_lines import (
    Embeddings,
    Generation,
    custom_id_of,
    embedding_line,
    part_key,
    request_error_line,
    success_line,
)
from app.jobs.planning import JobDefaults, UnsupportedRequest, line_param, plan_embedding, plan_parsed
from app.jobs.stats import length_histogram
from app.jobs.telemetry import EngineTelemetry, batch_telemetry, combine
from app.jobs.uploads import lines_from
from worker.engine import Engine, RequestRejected
from worker.packing import line_facts, packing_order
from worker.windows import Generated, PreparedWindow

log = logging.getLogger(__name__)
T = TypeVar("T")

STOPPING_STATUSES = {
    JobStatus.CANCELLING,
    JobStatus.CANCELLED,
    JobStatus.EXPIRING,
    JobStatus.EXPIRED,
    JobStatus.FAILED,
}


@dataclass
class ShardOutcome:
    stopped: bool  # cut short by cancel or expiry
    batches: int


class ShardRunner:
    def __init__(
        self,
        engine: Engine,
        queue: JobQueue,
        store: ObjectStore,
        worker_id: str,
        lease_seconds: float,
        stop_requested: threading.Event,
        max_batch_attempts: int = 3,
    ) -> None:
        self.max_batch_attempts = max_batch_attempts
        self.engine = engine
        self.queue = queue
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.stop_requested = stop_requested

    def _input_lines(self, shard: ClaimedShard) -> Iterator[tuple[int, bytes]]:
        """The shard's lines from `next_line`, read from the recorded line nearest before it."""
        lines = lines_from(self.store, shard.input_key, shard.line_offsets, shard.next_line, self.lease_seconds)
        return itertools.islice(enumerate(lines, start=shard.next_line), shard.end_line - shard.next_line)

    def _prepare(
        self,
        shard: ClaimedShard,
        defaults: JobDefaults,
        seq: int,
        chunk: list[tuple[int, bytes]],
        batch_size: int,
        preparer: ThreadPoolExecutor,
    ) -> PreparedWindow:
        """A window of lines planned for the engine. A packed generation window (more lines
        than one static batch) is only parsed and ordered here; its static batches are queued
        on `preparer` to be tokenized one by one (before any later window)."""
        embeddings = shard.endpoint == EMBEDDINGS
        window = PreparedWindow(seq=seq, first_line=chunk[0][0], next_line=chunk[-1][0] + 1, embeddings=embeddings)
        if embeddings or len(chunk) <= batch_size:
            self._plan_lines(shard, defaults, window, [(index, raw, None) for index, raw in chunk])
            return window
        parsed: list[tuple[int, bytes, Request]] = []
        for index, raw in chunk:
            try:
                parsed.append((index, raw, parse_line(raw, index, shard.endpoint)))
            except Exception as err:
                window.errors[index] = self._error_line(shard, index, raw, err)
        facts = [line_facts(request, defaults) for _, _, request in parsed]
        order = packing_order(facts, self.engine.kv_cache_tokens)
        for start in range(0, len(order), batch_size):
            part = PreparedWindow(seq=seq, first_line=window.first_line, next_line=window.next_line)
            lines = [parsed[i] for i in order[start : start + batch_size]]
            window.planned.append(preparer.submit(self._plan_lines, shard, defaults, part, lines))
        return window

    def _plan_lines(
        self,
        shard: ClaimedShard,
        defaults: JobDefaults,
        window: PreparedWindow,
        lines: Sequence[tuple[int, bytes, Request | None]],
    ) -> PreparedWindow:
        """Plans (index, raw line, its parse if already parsed) into `window`: runnable, or an error line."""
        for index, raw, request in lines:
            try:
                request, engine_input, params = self._plan(shard, defaults, index, raw, request)
            except Exception as err:
                window.errors[index] = self._error_line(shard, index, raw, err)
                continue
            window.runnable.append(request)
            (window.inputs if window.embeddings else window.prompts).append(engine_input)
            window.sampling.append(params)
        return window

    def _error_line(self, shard: ClaimedShard, index: int, raw: bytes, err: Exception) -> bytes:
        """The error line of a line that cannot be planned."""
        if isinstance(err, LineError):  # the file changed since upload; still answer per line
            return request_error_line(custom_id_of(raw), err.message, err.param, "invalid_request")
        if isinstance(err, UnsupportedRequest):
            return request_error_line(custom_id_of(raw), err.message, err.param, err.code)
        # Whatever else a line can do, it costs only that line.
        log.error("could not prepare line %d of %s", index + 1, shard.job_id, exc_info=err)
        message = f"This request could not be prepared ({type(err).__name__}: {str(err)[:200]})."
        return request_error_line(custom_id_of(raw), message, None, "invalid_request")

    def _plan(
        self, shard: ClaimedShard, defaults: JobDefaults, index: int, raw: bytes, request: Request | None
    ) -> tuple[Request, Any, dict[str, Any]]:
        """One line planned and checked by the engine: (request, its prompt or inputs as token
        ids, its SamplingParams or PoolingParams keyword arguments). A request the engine
        refuses is an UnsupportedRequest naming the line's field."""
        engine = self.engine
        if shard.endpoint == EMBEDDINGS:
            embedding = plan_embedding(raw, index, defaults, engine.input_token_ids, engine.limits)
            _engine_check(engine.check_pooling, embedding.request, embedding.pooling)
            return embedding.request, embedding.inputs, embedding.pooling
        request = request or parse_line(raw, index, shard.endpoint)
        planned = plan_parsed(request, defaults, engine.prompt_token_ids, engine.limits, engine.models)
        _engine_check(engine.check, planned.request, planned.sampling)
        return planned.request, planned.prompt, planned.sampling

    def _generate(self, window: PreparedWindow, batch_size: int) -> Generated:
        """One `generate` per static batch of `batch_size`. A packed window (more lines than
        one batch) runs as static batches of similar requested length, so short answers do
        not wait for long ones; the generations come back in input order."""
        if window.planned:
            return self._generate_planned(window)
        count = len(window.runnable)
        if count <= batch_size:
            groups = [list(range(count))] if count else []
        else:  # an embeddings window, by its inputs' tokens
            order = sorted(range(count), key=window.length)
            groups = [order[start : start + batch_size] for start in range(0, count, batch_size)]
        generations, telemetry = self._run_groups(window, groups)
        return Generated(generations, combine(telemetry), len(telemetry))

    def _generate_planned(self, window: PreparedWindow) -> Generated:
        """Runs a packed window's static batches as each is planned, then puts the window's
        runnable lines and their generations back in input order."""
        rows: list[tuple[Request, list[int], dict[str, Any], Generation | Embeddings]] = []
        telemetry: list[EngineTelemetry | None] = []
        for planned in window.planned:
            part = planned.result()
            generations, part_telemetry = self._run_groups(part, [list(range(len(part.runnable)))])
            rows += zip(part.runnable, part.prompts, part.sampling, generations, strict=True)
            telemetry += part_telemetry
            window.errors.update(part.errors)
        window.planned = []
        rows.sort(key=lambda row: row[0].index)
        window.runnable = [request for request, _, _, _ in rows]
        window.prompts = [prompt for _, prompt, _, _ in rows]
        window.sampling = [sampling for _, _, sampling, _ in rows]
        return Generated([generation for *_, generation in rows], combine(telemetry), len(telemetry))

    def _run_groups(
        self, window: PreparedWindow, groups: list[list[int]]
    ) -> tuple[list[Generation | Embeddings], list[EngineTelemetry | None]]:
        """Runs each group of the window's positions as a static batch: the generations in the
        window's order (the engine's refusals moved to its error lines), each batch's telemetry."""
        in_order: list[Generation | Embeddings | None] = [None] * len(window.runnable)
        refused: dict[int, RequestRejected] = {}
        telemetry: list[EngineTelemetry | None] = []
        for group in groups:
            for positions, outcome in self._static_batches(window, group):
                if isinstance(outcome, RequestRejected):
                    refused[positions[0]] = outcome
                    continue
                results: list[Generation | Embeddings] = list(outcome)
                for position, result in zip(positions, results, strict=True):
                    in_order[position] = result
                generations = [g for g in results if isinstance(g, Generation)]
                telemetry.append(batch_telemetry(generations, self.engine.kv_cache_tokens) if generations else None)
        _set_refused_aside(window, refused)
        return [g for g in in_order if g is not None], telemetry

    def _run_static_batch(self, window: PreparedWindow, positions: list[int]) -> list[Generation] | list[Embeddings]:
        """One `generate` (or `embed`) call for the window's requests at `positions`."""
        sampling = [window.sampling[i] for i in positions]
        if window.embeddings:
            return self.engine.embed([window.inputs[i] for i in positions], sampling)
        return self.engine.generate([window.prompts[i] for i in positions], sampling)

    def _static_batches(
        self, window: PreparedWindow, positions: list[int]
    ) -> Iterator[tuple[list[int], list[Generation] | list[Embeddings] | RequestRejected]]:
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

    def _set_aside(self, window: PreparedWindow, attempts: int) -> PreparedWindow:
        """A window that killed the engine on every try: its lines become error lines."""
        message = (
            f"The engine failed {attempts - 1} times on the static batch holding this request "
            "(lines {first}-{last}); the batch was set aside so the rest of the job could run."
        ).format(first=window.first_line + 1, last=window.next_line)
        for request in window.runnable:
            window.errors[request.index] = request_error_line(request.custom_id, message, None, "engine_error")
        window.runnable, window.prompts, window.inputs, window.sampling = [], [], [], []
        return window

    def _write(
        self,
        shard: ClaimedShard,
        window: PreparedWindow,
        generated: Generated,
        seconds: float,
    ) -> JobStatus:
        """Stores the window's results, then records its progress in one transaction."""
        generations = generated.generations
        model = self.engine.model_name
        out = [
            embedding_line(request, generation, model)
            if isinstance(generation, Embeddings)
            else success_line(request, generation, model)
            for request, generation in zip(window.runnable, generations, strict=True)
        ]
        err = [line for _, line in sorted(window.errors.items())]
        for kind, lines in (("out", out), ("err", err)):
            if lines:
                key = part_key(shard.job_id, shard.shard_index, window.seq, kind)
                data = b"".join(lines)
                retry_transient(
                    partial(self.store.put_bytes, key, data),
                    what=f"storing {key}",
                    give_up_after_seconds=self.lease_seconds,
                )
        result = WindowResult(
            first_line=window.first_line,
            next_line=window.next_line,
            prompts=len(window.runnable),
            completed=len(out),
            failed=len(err),
            prompt_tokens=sum(g.prompt_tokens for g in generations),
            cached_tokens=sum(g.cached_tokens for g in generations if isinstance(g, Generation)),
            completion_tokens=sum(g.completion_tokens for g in generations),
            generate_seconds=seconds,
            output_lengths=length_histogram(g.completion_tokens for g in generations if isinstance(g, Generation)),
            error_lines=[index - window.first_line for index in sorted(window.errors)],
            static_batches=generated.static_batches,
            engine_stats=generated.telemetry.as_json() if generated.telemetry else None,
        )
        return retry_transient(
            lambda: self.queue.record_window(shard, window.seq, self.worker_id, result, self.lease_seconds),
            what=f"recording window {window.seq} of shard {shard.shard_index}",
            give_up_after_seconds=self.lease_seconds,
        )

    def run(self, shard: ClaimedShard) -> ShardOutcome:
        batch_size = shard.batch_size
        # Length-aware packing reads a window of several static batches at a time. After a
        # claim that died without progress, windows are single static batches: the one that
        # kills the engine is then found (and set aside) alone, not with its whole window.
        defaults = JobDefaults.model_validate(shard.sampling_defaults)
        packed = defaults.pack_window is not None and shard.attempts <= 1
        window_lines = batch_size * ((defaults.pack_window or 1) if packed else 1)
        lines = self._input_lines(shard)
        chunks = iter(lambda: list(itertools.islice(lines, window_lines)), [])
        seqs = itertools.count(shard.windows_done)
        batches = 0
        with ThreadPoolExecutor(1, "prepare") as preparer, ThreadPoolExecutor(1, "write") as writer:

            def prepare_next() -> Future[PreparedWindow] | None:
                chunk = next(chunks, None)
                if not chunk:
                    return None
                return preparer.submit(self._prepare, shard, defaults, next(seqs), chunk, batch_size, preparer)

            pending_prep = prepare_next()
            pending_write: Future[JobStatus] | None = None
            cut_short = False
            while pending_prep is not None:
                window = pending_prep.result()
                pending_prep = prepare_next()  # tokenizes batch k+1 while k generates
                if batches == 0 and shard.attempts > self.max_batch_attempts:
                    window = self._set_aside(window, shard.attempts)
                started = time.perf_counter()
                try:
                    generated = self._generate(window, batch_size)
                except Exception as exc:
                    raise EngineFailed(f"generate failed on lines {window.first_line + 1}-{window.next_line}") from exc
                seconds = time.perf_counter() - started
                previous, pending_write = (
                    pending_write,
                    writer.submit(self._write, shard, window, generated, seconds),
                )
                batches += 1
                # The previous batch's transaction tells whether the batch was cancelled meanwhile.
                if previous is not None and previous.result() in STOPPING_STATUSES:
                    cut_short = True
                if cut_short or self.stop_requested.is_set():
                    break
            last_status = pending_write.result() if pending_write is not None else None
            if pending_prep is not None and not pending_prep.cancel():
                for planned in pending_prep.result().planned:  # its static batches, not yet tokenized
                    planned.cancel()
        cut_short = cut_short or last_status in STOPPING_STATUSES
        if pending_prep is not None and not cut_short:
            raise ShutdownRequested
        return ShardOutcome(stopped=cut_short and pending_prep is not None, batches=batches)


def _engine_check(check: Callable[[dict[str, Any]], None], request: Request, params: dict[str, Any]) -> None:
    """The engine's own check of a planned line's parameters; its refusal names the line's field."""
    try:
        check(params)
    except RequestRejected as refusal:
        raise UnsupportedRequest(
            f"The engine refuses this request: {refusal}", line_param(request.body, refusal.field)
        ) from refusal


def _set_refused_aside(window: PreparedWindow, refused: dict[int, RequestRejected]) -> None:
    """Moves the requests the engine refused (by position) to the window's error lines."""
    for position in sorted(refused, reverse=True):
        request = window.drop(position)
        refusal = refused[position]
        message = f"The engine refused this request: {refusal}"
        param = line_param(request.body, refusal.field)
        window.errors[request.index] = request_error_line(request.custom_id, message, param, "invalid_request")


class ShutdownRequested(Exception):
    """The worker is stopping; the shard is released for another worker to resume."""


class EngineFailed(RuntimeError):
    """`generate` raised: the engine's state is unknown, so the worker process must end."""
