"""Pricing a job before it runs: lines planned as the worker would plan them, tokens
counted with the model's own tokenizer, and an ETA from what workers measured. A dry run
plans every line; a queued job's estimate plans an even sample of its lines (one in each
run of k, `spread_sample`) and scales the counts up, so the file is tokenized once, by the
worker.

The ETA divides the requested output tokens (every line's `max_tokens` times `n`,
an upper bound: lines may stop early) by the generation rate that workers holding
this model recorded on recent jobs of the same engine call at the same batch size, times
the number of such workers that are up. With no such history it says so instead of
guessing. A kind that generates nothing (embeddings, score, rerank, loglikelihood): its ETA
divides its input tokens by the rate at which workers read them.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from app.core.settings import Settings
from app.data.json_values import Eta, FailingLine, JobDefaults, JobEstimate, LineCounts
from app.data.models import Job, JobStatus
from app.data.records import Records
from app.jobs.endpoints import ENDPOINTS, endpoint_for
from app.jobs.endpoints.base import ModelLimits, PlanContext, ServedModels, UnsupportedRequest
from app.jobs.lines import LineError
from app.jobs.output_lines import custom_id_of
from app.jobs.planning import plan_request

HISTORY_DAYS = 7
WORKER_STALE_SECONDS = 120

log = logging.getLogger(__name__)


# transformers imports its classes lazily, and two threads importing one at once can fail
# ("cannot import name 'AutoTokenizer'"): the heavy-work threads load a model's files one
# at a time.
_TRANSFORMERS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def model_tokenizer(model: str) -> Any:
    """The model's tokenizer (the same files the engine loads), once per process."""
    with _TRANSFORMERS_LOCK:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model)


@functools.lru_cache(maxsize=2)
def model_limits(model: str, configured_context: int | None) -> ModelLimits:
    """The context length (the setting, else the model's) and the vocabulary size (the
    larger of the model's and the tokenizer's, as vLLM takes it)."""
    with _TRANSFORMERS_LOCK:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    dimensions = getattr(config, "matryoshka_dimensions", None)
    return ModelLimits(
        max_model_len=configured_context or int(config.max_position_embeddings),
        vocab_size=max(int(getattr(config, "vocab_size", 0) or 0), len(model_tokenizer(model))),
        embedding_size=getattr(config, "embedding_size", None) or getattr(config, "hidden_size", None),
        matryoshka=bool(dimensions) or bool(getattr(config, "is_matryoshka", False)),
        matryoshka_dimensions=tuple(dimensions) if dimensions else None,
    )


def preload_model_files(settings: Settings) -> None:
    """Loads the served models' tokenizers and configs now, at start-up: the first load
    imports transformers (and torch with it), some seconds of CPU that would otherwise
    land in the middle of the first job's run, beside its engine. A model whose files
    are not here yet is loaded by the first estimate that needs it instead."""
    for model, context in (
        (settings.model, settings.max_model_len),
        (settings.embedding_model, settings.embedding_max_model_len),
    ):
        try:
            model_limits(model, context)
        except Exception as exc:  # an estimate that needs the model says what is wrong
            log.info("model files of %s not loaded at start-up: %s", model, exc)


def spread_sample(lines: Iterable[bytes], total_lines: int, sample_lines: int) -> Iterator[tuple[int, bytes]]:
    """(index, line) of one line in each run of k, k chosen so about `sample_lines` of
    `total_lines` are taken; every line when the file is no larger. Which line of a run is
    drawn (the same for the same file size), so a file with a period-k pattern is not read
    at one phase of it. The others are read, not parsed."""
    every = max(1, math.ceil(total_lines / max(sample_lines, 1)))
    draw = random.Random(total_lines)
    taken = draw.randrange(every)
    for index, raw in enumerate(lines):
        if index % every == taken:
            yield index, raw
        if index % every == every - 1:
            taken = draw.randrange(every)


def count_lines(
    lines: Iterable[tuple[int, bytes]], endpoint: str, defaults: JobDefaults, settings: Settings
) -> LineCounts:
    """Plans each (index, line); returns the counts and the lines that would fail, and why.
    Each kind counts its own tokens (an embeddings line: all its inputs' tokens, no output)."""
    kind = endpoint_for(endpoint)
    model, context = kind.model_files(settings)
    limits = model_limits(model, context)
    models = ServedModels.of(settings) if kind.accepts_adapters() else None
    ctx = PlanContext(defaults, limits, model_tokenizer(model), models)

    def tokens_of(index: int, raw: bytes) -> tuple[int, int]:
        """(prompt tokens, requested output tokens) of a runnable line."""
        return kind.token_counts(plan_request(raw, index, endpoint, ctx))

    counts = LineCounts(context_length=limits.max_model_len)
    for index, raw in lines:
        counts.lines += 1
        try:
            prompt_tokens, output_tokens = tokens_of(index, raw)
        except Exception as err:  # whatever a line does costs only that line, as in the worker
            counts.failing_lines += 1
            if len(counts.failing) < settings.max_reported_errors:
                counts.failing.append(_failing_line(index, raw, err))
            continue
        counts.runnable_lines += 1
        counts.prompt_tokens += prompt_tokens
        counts.requested_output_tokens += output_tokens
    return counts


def _failing_line(index: int, raw: bytes, err: Exception) -> FailingLine:
    if isinstance(err, UnsupportedRequest):
        code, param, message = err.code, err.param, err.message
    elif isinstance(err, LineError):
        code, param, message = "invalid_request", err.param, err.message
    else:  # what the worker would answer for a line it could not prepare
        log.exception("could not plan line %d", index + 1)
        code, param = "invalid_request", None
        message = f"This request could not be prepared ({type(err).__name__}: {str(err)[:200]})."
    return FailingLine(line=index + 1, custom_id=custom_id_of(raw), code=code, param=param, message=message)


def eta(
    records: Records, model: str, batch_size: int | None, tokens: int, *, endpoint: str, reads_input: bool = False
) -> Eta:
    """Seconds to generate `tokens` (for a kind that generates nothing: to read `tokens` of
    input), from the rate workers measured recently on jobs of `endpoint`'s engine call."""
    size = f"size {batch_size}" if batch_size else "the size fitted to the engine"
    call = endpoint_for(endpoint).call
    same_call = [url for url, kind in ENDPOINTS.items() if kind.call is call]
    measured = records.measured_rate(model, batch_size, HISTORY_DAYS, prompt_tokens=reads_input, endpoints=same_call)
    workers = sum(1 for w in records.ready_workers(WORKER_STALE_SECONDS) if w.model == model)
    if measured is None or not measured[0]:
        return Eta(
            eta_seconds=None,
            basis=f"no history: no worker holding {model} has run a batch of {size} in the last {HISTORY_DAYS} days",
            ready_workers=workers,
        )
    tokens_per_second, static_batches = measured
    rate = "input tokens/s read" if reads_input else "generated tokens/s"
    bound = "" if reads_input else "; an upper bound, as every line is counted at its max_tokens"
    return Eta(
        eta_seconds=round(tokens / (tokens_per_second * max(workers, 1)), 3),
        basis=f"{static_batches} static batches of {size} on {model} in the last {HISTORY_DAYS} days, "
        f"{tokens_per_second:.0f} {rate} per worker, {max(workers, 1)} worker(s){bound}",
        tokens_per_second_per_worker=round(tokens_per_second, 1),
        ready_workers=workers,
    )


def estimate_job(
    records: Records,
    settings: Settings,
    lines: Iterable[tuple[int, bytes]],
    *,
    endpoint: str,
    defaults: JobDefaults,
    model: str,
    batch_size: int | None,
    total_lines: int | None = None,
) -> JobEstimate:
    """The whole estimate: counts, failing lines and the ETA, from (index, line) pairs. When
    they are a sample of a file of `total_lines`, the counts are scaled up to the whole file
    (`sampled_lines` says how many were planned)."""
    counted = count_lines(lines, endpoint, defaults, settings)
    read = counted.lines
    if total_lines and 0 < read < total_lines:
        scale = total_lines / read
        for name in ("lines", "runnable_lines", "prompt_tokens", "requested_output_tokens", "failing_lines"):
            setattr(counted, name, round(getattr(counted, name) * scale))
        counted.sampled_lines = read
    if endpoint_for(endpoint).generates:
        timing = eta(records, model, batch_size, counted.requested_output_tokens, endpoint=endpoint)
    else:  # its workers' rate is input tokens read
        timing = eta(records, model, batch_size, counted.prompt_tokens, endpoint=endpoint, reads_input=True)
    return JobEstimate(**counted.model_dump(), **timing.model_dump(), batch_size=batch_size)


def deadline_at_risk(job: Job) -> bool | None:
    """Whether a queued or running batch cannot finish by its deadline (`expires_at`) at
    the rate workers measured: its ETA (the estimate's, for the whole batch) scaled to the
    lines not yet done, against the time left. None when it has ended, or when no worker
    has measured the rate yet. Other batches ahead of it in the queue are not counted."""
    if job.status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS) or job.estimate is None:
        return None
    eta_seconds = job.estimate.eta_seconds
    if eta_seconds is None or job.request_total <= 0:
        return None
    left = 1 - (job.request_completed + job.request_failed) / job.request_total
    return datetime.now(UTC) + timedelta(seconds=eta_seconds * left) > job.expires_at
