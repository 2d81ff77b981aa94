"""Runs one claimed shard as static batches.

Three stages overlap so the engine never waits on I/O: while batch k is in
`generate`, a thread prepares batch k+1 (reading, parsing, tokenizing) and another
writes batch k-1's results to storage and its progress to Postgres.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from app.core.backoff import retry_transient
from app.core.storage import ObjectStore, resilient_lines
from app.data.claims import ClaimedShard
from app.data.models import JobStatus
from app.data.queue import JobQueue, WindowResult
from app.jobs.lines import LineError, Request
from app.jobs.output_lines import Generation, custom_id_of, part_key, request_error_line, success_line
from app.jobs.planning import JobDefaults, UnsupportedRequest, plan_request
from app.jobs.stats import length_histogram
from app.jobs.telemetry import EngineTelemetry, batch_telemetry, combine
from worker.engine import Engine, RequestRejected

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
class PreparedWindow:
    """One static batch, ready for the engine."""

    seq: int
    first_line: int
    next_line: int
    runnable: list[Request] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    sampling: list[dict[str, Any]] = field(default_factory=list)
    # Lines answered without the engine, keyed by input index.
    errors: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Generated:
    """What the engine made of one window, in input order."""

    generations: list[Generation]
    telemetry: EngineTelemetry | None
    static_batches: int  # generate calls


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
        lines = resilient_lines(self.store, shard.input_key, self.lease_seconds)
        return itertools.islice(enumerate(lines), shard.next_line, shard.end_line)

    def _prepare(
        self, shard: ClaimedShard, defaults: JobDefaults, seq: int, chunk: list[tuple[int, bytes]]
    ) -> PreparedWindow:
        window = PreparedWindow(seq=seq, first_line=chunk[0][0], next_line=chunk[-1][0] + 1)
        for index, raw in chunk:
            try:
                planned = plan_request(
                    raw,
                    index,
                    shard.endpoint,
                    defaults,
                    self.engine.prompt_token_ids,
                    self.engine.limits,
                    self.engine.models,
                )
                self.engine.check(planned.sampling)
            except LineError as err:  # the file changed since upload; still answer per line
                window.errors[index] = request_error_line(custom_id_of(raw), err.message, err.param, "invalid_request")
                continue
            except UnsupportedRequest as err:
                window.errors[index] = request_error_line(custom_id_of(raw), err.message, err.param, err.code)
                continue
            except RequestRejected as err:
                message = f"The engine refuses this request: {err}"
                window.errors[index] = request_error_line(custom_id_of(raw), message, None, "invalid_request")
                continue
            except Exception as err:  # whatever else a line can do, it costs only that line
                log.exception("could not prepare line %d of %s", index + 1, shard.job_id)
                message = f"This request could not be prepared ({type(err).__name__}: {str(err)[:200]})."
                window.errors[index] = request_error_line(custom_id_of(raw), message, None, "invalid_request")
                continue
            window.runnable.append(planned.request)
            window.prompts.append(planned.prompt)
            window.sampling.append(planned.sampling)
        return window

    def _generate(self, window: PreparedWindow, batch_size: int) -> Generated:
        """One `generate` per static batch of `batch_size`. A packed window (more lines than
        one batch) is cut into static batches of similar requested length, so short answers
        do not wait for long ones; the generations come back in input order."""
        if not window.prompts:
            return Generated([], None, 0)
        count = len(window.prompts)
        if count <= batch_size:
            groups = [list(range(count))]
        else:
            by_length = sorted(range(count), key=lambda i: (window.sampling[i]["max_tokens"], len(window.prompts[i])))
            groups = [by_length[start : start + batch_size] for start in range(0, count, batch_size)]
        in_order: list[Generation | None] = [None] * count
        refused: dict[int, str] = {}
        telemetry: list[EngineTelemetry | None] = []
        for group in groups:
            for positions, outcome in self._static_batches(window, group):
                if isinstance(outcome, str):
                    refused[positions[0]] = outcome
                    continue
                for position, generation in zip(positions, outcome, strict=True):
                    in_order[position] = generation
                telemetry.append(batch_telemetry(outcome, self.engine.kv_cache_tokens))
        _set_refused_aside(window, refused)
        return Generated([g for g in in_order if g is not None], combine(telemetry), len(telemetry))

    def _static_batches(
        self, window: PreparedWindow, positions: list[int]
    ) -> Iterator[tuple[list[int], list[Generation] | str]]:
        """Runs the window's requests at `positions` as one static batch. When the engine
        refuses a request, the batch is split in two and each half run again, until the
        refused request stands alone: it gets the engine's reason, the rest run."""
        try:
            generated = self.engine.generate(
                [window.prompts[i] for i in positions], [window.sampling[i] for i in positions]
            )
        except RequestRejected as refusal:
            if len(positions) == 1:
                yield positions, str(refusal)
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
        window.runnable, window.prompts, window.sampling = [], [], []
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
        out = [
            success_line(request, generation, self.engine.model_name)
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
            completion_tokens=sum(g.completion_tokens for g in generations),
            generate_seconds=seconds,
            output_lengths=length_histogram(g.completion_tokens for g in generations),
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
        # Length-aware packing reads a window of several static batches at a time.
        defaults = JobDefaults.model_validate(shard.sampling_defaults)
        window_lines = batch_size * (defaults.pack_window or 1)
        lines = self._input_lines(shard)
        chunks = iter(lambda: list(itertools.islice(lines, window_lines)), [])
        seqs = itertools.count(shard.windows_done)
        batches = 0
        with ThreadPoolExecutor(1, "prepare") as preparer, ThreadPoolExecutor(1, "write") as writer:

            def prepare_next() -> Future[PreparedWindow] | None:
                chunk = next(chunks, None)
                return preparer.submit(self._prepare, shard, defaults, next(seqs), chunk) if chunk else None

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
            if pending_prep is not None:
                pending_prep.cancel()
        cut_short = cut_short or last_status in STOPPING_STATUSES
        if pending_prep is not None and not cut_short:
            raise ShutdownRequested
        return ShardOutcome(stopped=cut_short and pending_prep is not None, batches=batches)


def _set_refused_aside(window: PreparedWindow, refused: dict[int, str]) -> None:
    """Moves the requests the engine refused (by position) to the window's error lines."""
    for position in sorted(refused, reverse=True):
        request = window.runnable.pop(position)
        del window.prompts[position], window.sampling[position]
        message = f"The engine refused this request: {refused[position]}"
        window.errors[request.index] = request_error_line(request.custom_id, message, None, "invalid_request")


class ShutdownRequested(Exception):
    """The worker is stopping; the shard is released for another worker to resume."""


class EngineFailed(RuntimeError):
    """`generate` raised: the engine's state is unknown, so the worker process must end."""
