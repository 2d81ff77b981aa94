"""Runs one claimed shard as static batches.

A generation shard's static batches overlap in the engine by default (worker.overlap): the
next enters while the last drains, and each window is recorded when its last request ends.
Strict mode (`batching: "strict"`) and embeddings run one blocking call per static batch.
Either way three stages overlap so the engine never waits on I/O: while the engine runs,
a thread prepares the next window (reading, parsing, tokenizing) and another writes the
finished ones' results to storage and their progress to Postgres. A packed window is
ordered from its parsed lines (worker.packing) and tokenized one static batch at a time,
so its first `generate` starts without waiting for the whole window's tokens. An embeddings
shard runs the same way, each static batch of `batch_size` lines in one `embed` call.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from app.core.backoff import retry_transient
from app.core.storage import ObjectStore
from app.data.claims import ClaimedShard, WindowResult
from app.data.models import JobStatus
from app.data.queue import JobQueue
from app.jobs.endpoints import endpoint_for
from app.jobs.endpoints.base import JobDefaults, PlanContext, UnsupportedRequest
from app.jobs.endpoints.call import LinePlan
from app.jobs.lines import LineError, Request, parse_line
from app.jobs.output_lines import custom_id_of, part_key, request_error_line
from app.jobs.planning import line_param, plan_parsed
from app.jobs.stats import length_histogram
from app.jobs.uploads import lines_from
from worker.engine import Engine, EngineFailed, RequestRejected
from worker.overlap import OverlappedEngine, StaticBatchSource, WindowRun, run_windows, window_result
from worker.packing import line_facts, packing_order
from worker.strict import StrictBatches
from worker.windows import Generated, PlannedLines, PreparedWindow

log = logging.getLogger(__name__)
T = TypeVar("T")
L = TypeVar("L", bound=PlannedLines)

DEFAULT_STATIC_BATCHES_IN_FLIGHT = 8  # Settings.max_static_batches_in_flight

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
        max_static_batches_in_flight: int = DEFAULT_STATIC_BATCHES_IN_FLIGHT,
    ) -> None:
        self.max_batch_attempts = max_batch_attempts
        self.max_static_batches_in_flight = max_static_batches_in_flight
        self.engine = engine
        self.strict = StrictBatches(engine)
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
        call = endpoint_for(shard.endpoint).call
        window = PreparedWindow(seq=seq, first_line=chunk[0][0], next_line=chunk[-1][0] + 1, call=call)
        if not call.packs_parsed_lines or len(chunk) <= batch_size:
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
            part = PlannedLines(call=call)  # one static batch of the window
            lines = [parsed[i] for i in order[start : start + batch_size]]
            window.planned.append(preparer.submit(self._plan_lines, shard, defaults, part, lines))
        return window

    def _plan_lines(
        self,
        shard: ClaimedShard,
        defaults: JobDefaults,
        window: L,
        lines: Sequence[tuple[int, bytes, Request | None]],
    ) -> L:
        """Plans (index, raw line, its parse if already parsed) into `window` (a window, or one
        static batch of a packed window): runnable, or an error line."""
        for index, raw, request in lines:
            try:
                plan = self._plan(shard, defaults, index, raw, request)
            except Exception as err:
                window.errors[index] = self._error_line(shard, index, raw, err)
                continue
            window.add(plan)
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
    ) -> LinePlan:
        """One line planned by its kind and checked by the engine. A request the engine
        refuses is an UnsupportedRequest naming the line's field."""
        engine = self.engine
        request = request or parse_line(raw, index, shard.endpoint)
        models = engine.models if request.kind.accepts_adapters() else None
        plan = plan_parsed(request, PlanContext(defaults, engine.limits, engine.tokenizer, models))
        try:
            request.kind.call.check(engine, plan)
        except RequestRejected as refusal:
            raise UnsupportedRequest(
                f"The engine refuses this request: {refusal}", line_param(request, refusal.field)
            ) from refusal
        return plan

    def _set_aside_when_planned(
        self, planned: Future[PreparedWindow], attempts: int, regrouped: bool
    ) -> PreparedWindow:
        return self._set_aside(planned.result(), attempts, regrouped)

    def _set_aside(self, window: PreparedWindow, attempts: int, regrouped: bool = False) -> PreparedWindow:
        """A window that killed the engine on every try: its lines become error lines. Their
        line numbers are named unless the job ran regrouped (its lines' places then differ)."""
        where = "" if regrouped else f" (lines {window.first_line + 1}-{window.next_line})"
        message = (
            f"The engine failed {attempts - 1} times on the static batch holding this request{where}; "
            "the batch was set aside so the rest of the job could run."
        )
        for request in window.runnable:
            window.errors[request.index] = request_error_line(request.custom_id, message, None, "engine_error")
        window.clear()
        return window

    def write_window(
        self,
        shard: ClaimedShard,
        window: PreparedWindow,
        generated: Generated,
        seconds: float,
    ) -> JobStatus:
        """Stores the window's results, then records its progress in one transaction."""
        generations = generated.generations
        call = window.call
        model = self.engine.model_name
        out = [
            request.answer(generation, model) for request, generation in zip(window.runnable, generations, strict=True)
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
            cached_tokens=sum(g.cached_tokens for g in generations),
            completion_tokens=sum(g.completion_tokens for g in generations),
            generate_seconds=seconds,
            accelerator_seconds=seconds * self.engine.tensor_parallel_size,
            output_lengths=length_histogram(call.output_lengths(generations)),
            error_lines=[index - window.first_line for index in sorted(window.errors)],
            static_batches=generated.static_batches,
            engine_stats=generated.telemetry,
        )
        return retry_transient(
            lambda: self.queue.record_window(shard, window.seq, self.worker_id, result, self.lease_seconds),
            what=f"recording window {window.seq} of shard {shard.shard_index}",
            give_up_after_seconds=self.lease_seconds,
        )

    def windows_of(
        self, shard: ClaimedShard, preparer: ThreadPoolExecutor
    ) -> Callable[[], Future[PreparedWindow] | None]:
        """The shard's windows, each prepared on `preparer` when asked for (None past its end).
        Length-aware packing reads a window of several static batches at a time. After a
        claim that died without progress, windows are single static batches and run one
        at a time: the one that kills the engine is then found (and set aside) alone, not
        with its whole window or the static batches overlapping it."""
        batch_size = shard.batch_size or self.engine.max_num_seqs  # the worker fits it at claim
        defaults = shard.sampling_defaults
        packed = defaults.pack_window is not None and not self.retrying(shard)
        window_lines = batch_size * ((defaults.pack_window or 1) if packed else 1)
        lines = self._input_lines(shard)
        chunks = iter(lambda: list(itertools.islice(lines, window_lines)), [])
        seqs = itertools.count(shard.windows_done)
        first = True

        def prepare_next() -> Future[PreparedWindow] | None:
            nonlocal first
            chunk = next(chunks, None)
            if not chunk:
                return None
            prepared = preparer.submit(self._prepare, shard, defaults, next(seqs), chunk, batch_size, preparer)
            if first and shard.attempts > self.max_batch_attempts:
                prepared = preparer.submit(self._set_aside_when_planned, prepared, shard.attempts, shard.regrouped)
            first = False
            return prepared

        return prepare_next

    @staticmethod
    def retrying(shard: ClaimedShard) -> bool:
        """The shard's last claim died without progress: its windows run alone, one static batch each."""
        return shard.attempts > 1

    @staticmethod
    def overlaps(shard: ClaimedShard) -> bool:
        """Whether the shard's static batches overlap in the engine: its engine call lets
        them (`EngineCall.overlaps`) and its job did not ask for strict static batches."""
        defaults = shard.sampling_defaults
        return endpoint_for(shard.endpoint).call.overlaps and defaults.batching == "overlapped"

    def shares_the_engine(self, shard: ClaimedShard) -> bool:
        """Whether the shard's static batches may share the engine with other shards'
        (worker.sharing): overlapped, and not retrying a crash."""
        return self.overlaps(shard) and not self.retrying(shard)

    def run(self, shard: ClaimedShard) -> ShardOutcome:
        """Runs the shard alone in the engine, to its end (or a stop)."""
        batch_size = shard.batch_size or self.engine.max_num_seqs
        with ThreadPoolExecutor(1, "prepare") as preparer, ThreadPoolExecutor(1, "write") as writer:
            prepare_next = self.windows_of(shard, preparer)
            if self.overlaps(shard):
                in_flight = 1 if self.retrying(shard) else self.max_static_batches_in_flight
                return self._run_overlapped(shard, prepare_next, writer, in_flight)
            return self._run_strict(shard, prepare_next, writer, batch_size)

    def _run_strict(
        self,
        shard: ClaimedShard,
        prepare_next: Callable[[], Future[PreparedWindow] | None],
        writer: ThreadPoolExecutor,
        batch_size: int,
    ) -> ShardOutcome:
        """One blocking engine call (the call's `run`) per static batch, each waiting for its
        slowest answer before the next starts: the seed's experiment, and every call whose
        static batches do not overlap (embeddings, scoring, loglikelihood)."""
        batches = 0
        pending_prep = prepare_next()
        pending_write: Future[JobStatus] | None = None
        cut_short = False
        while pending_prep is not None:
            window = pending_prep.result()
            pending_prep = prepare_next()  # tokenizes batch k+1 while k generates
            started = time.perf_counter()
            try:
                generated = self.strict.generate(window, batch_size)
            except Exception as exc:
                raise EngineFailed(f"generate failed on lines {window.first_line + 1}-{window.next_line}") from exc
            seconds = time.perf_counter() - started
            previous, pending_write = (
                pending_write,
                writer.submit(self.write_window, shard, window, generated, seconds),
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

    def _run_overlapped(
        self,
        shard: ClaimedShard,
        prepare_next: Callable[[], Future[PreparedWindow] | None],
        writer: ThreadPoolExecutor,
        in_flight: int,
    ) -> ShardOutcome:
        """The shard's static batches overlapped in the engine (worker.overlap); each window
        is written when its last request ends, in input order, with its share of the
        engine's wall time as its seconds (they add up to the shard's time in the engine)."""
        overlapped = OverlappedEngine(self.engine, in_flight)
        source = StaticBatchSource(prepare_next)
        writes: collections.deque[Future[JobStatus]] = collections.deque()
        stopping = False
        windows = 0

        def record(run: WindowRun) -> Future[JobStatus]:
            nonlocal windows
            generated = window_result(run, self.engine.kv_cache_tokens)
            writes.append(writer.submit(self.write_window, shard, run.window, generated, run.seconds))
            windows += 1
            return writes[-1]

        def should_stop() -> bool:
            nonlocal stopping
            while writes and writes[0].done():
                if writes.popleft().result() in STOPPING_STATUSES:  # cancelled or expired meanwhile
                    stopping = True
            return stopping or self.stop_requested.is_set()

        try:
            left = run_windows(overlapped, source, record, should_stop)
        except EngineFailed:
            source.cancel()
            raise
        except BaseException:  # storage or Postgres gave up: the engine runs on, without this shard
            overlapped.abort()
            source.cancel()
            raise
        stopping = any([write.result() in STOPPING_STATUSES for write in writes]) or stopping
        if left and not stopping:
            raise ShutdownRequested
        return ShardOutcome(stopped=stopping and left, batches=windows)


class ShutdownRequested(Exception):
    """The worker is stopping; the shard is released for another worker to resume."""
