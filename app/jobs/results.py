"""Results so far: the finished lines of a batch, in input order, while it runs.

Each recorded static batch covers consecutive input lines; its output part holds
the lines that succeeded and its error part the others, and the run records which
offsets went to the error part. So any stretch of lines can be served in input
order from the parts, without waiting for the final join. Only the contiguous
prefix is served: with several workers, a later shard may finish before an
earlier one, and its lines wait until the gap before them closes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from app.core.line_offsets import LineOffsets
from app.core.storage import ObjectStore, read_lines
from app.data.models import TERMINAL_STATUSES, Job, JobStatus, Shard, Window
from app.jobs.finalize import unrun_reason
from app.jobs.line_index import LineIndex
from app.jobs.output_lines import batch_error_line, part_key
from app.jobs.run_order import read_order
from app.jobs.uploads import custom_ids_from


@dataclass(frozen=True)
class _Stretch:
    """Consecutive input lines [start, end) answered by one run, or never run."""

    start: int
    end: int
    run: Window | None  # None: lines a cancelled or expired batch never ran


@dataclass(frozen=True)
class ResultsPage:
    after: int  # the first line (0-based) in this page
    next_after: int  # where the next page starts
    complete: bool  # no more lines will come
    lines: Iterator[bytes]


def _stretches(job: Job, runs: list[Window], shards: list[Shard]) -> list[_Stretch]:
    stretches = [_Stretch(r.first_line, r.first_line + r.completed + r.failed, r) for r in runs]
    if JobStatus(job.status) in TERMINAL_STATUSES:
        stretches += [_Stretch(s.next_line, s.end_line, None) for s in shards if s.next_line < s.end_line]
    return sorted(stretches, key=lambda s: s.start)


def _contiguous_end(stretches: list[_Stretch], after: int) -> int:
    """The end of the stretches that follow one another without a gap from line `after`."""
    end = after
    for stretch in stretches:
        if stretch.end <= end:
            continue
        if stretch.start > end:
            break
        end = stretch.end
    return end


def results_page(
    store: ObjectStore,
    job: Job,
    runs: list[Window],
    shards: list[Shard],
    input_key: str,
    after: int,
    limit: int,
    line_offsets: LineOffsets | None = None,
    index: LineIndex | None = None,
) -> ResultsPage:
    """Up to `limit` finished lines from line `after` on (0-based), in input order. Lines never
    run take their custom_ids from the input file's line `index`; without one (a file uploaded
    before indexes) from the lines of `input_key` (the job's run input when regrouped) parsed."""
    stretches = _stretches(job, runs, shards)
    next_after = min(_contiguous_end(stretches, after), after + limit)
    terminal = JobStatus(job.status) in TERMINAL_STATUSES
    complete = terminal and next_after >= _contiguous_end(stretches, next_after)
    wanted = [s for s in stretches if s.end > after and s.start < next_after]
    source = _Unrun(input_key, line_offsets, index)
    return ResultsPage(after, next_after, complete, _lines(store, job, wanted, source, after, next_after))


def _lines(
    store: ObjectStore,
    job: Job,
    stretches: list[_Stretch],
    source: _Unrun,
    after: int,
    end: int,
) -> Iterator[bytes]:
    for stretch in stretches:
        if stretch.run is not None:
            first, lines = stretch.start, _run_lines(store, job.id, stretch.run)
        else:  # read from the page's first line, not the stretch's
            first = max(stretch.start, after)
            lines = _unrun_lines(store, job, source, first, min(stretch.end, end))
        for index, line in enumerate(lines, start=first):
            if index >= end or index >= stretch.end:
                break
            if index >= after:
                yield line + b"\n"


def _run_lines(store: ObjectStore, job_id: str, run: Window) -> Iterator[bytes]:
    """One run's lines in input order: its output and error parts interleaved."""
    out = read_lines(store, part_key(job_id, run.shard_index, run.seq, "out")) if run.completed else iter(())
    err = read_lines(store, part_key(job_id, run.shard_index, run.seq, "err")) if run.failed else iter(())
    if run.error_lines is None:  # recorded before error offsets were: outputs, then errors
        yield from out
        yield from err
        return
    failed = set(run.error_lines)
    for offset in range(run.completed + run.failed):
        line = next(err if offset in failed else out, None)
        if line is None:
            return
        yield line


@dataclass(frozen=True)
class _Unrun:
    """Where lines never run learn their custom_ids: the input's line index, or without one
    the lines of `key` (the input, or the job's run input) with their `line_offsets`."""

    key: str
    line_offsets: LineOffsets | None
    index: LineIndex | None


def _unrun_lines(store: ObjectStore, job: Job, source: _Unrun, start: int, stop: int) -> Iterator[bytes]:
    """Lines `start` to `stop` (in run order) as "never ran" error lines, each read with a
    ranged read from the recorded entry or line nearest before `start`, so paging through them
    reads the index (or the file) about once."""
    code, message = unrun_reason(JobStatus(job.status))
    ids: Iterator[str]
    if job.run_input is not None and source.index is not None:  # run positions are input lines through the run order
        lines = read_order(store, job.run_input.order_key, start, stop)
        found = source.index.custom_ids_at(store, lines)
        ids = (found[line] for line in lines)
    else:  # without an index (uploaded before indexes), the lines of `source.key` parsed
        ids = custom_ids_from(store, source.index, source.key, source.line_offsets, start)
    for custom_id in ids:
        yield batch_error_line(custom_id, message, code).rstrip(b"\n")
