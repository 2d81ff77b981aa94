"""A regrouped job's answers put back in input order (finalization of a job that ran from a
run input, app.jobs.run_order).

Its windows hold lines of the run input, so their parts cannot be joined as they are.
Every line (the output and error parts' lines, and "never ran" lines for what a cancel or
expiry left) is spooled once to a local temporary file, its place noted by the input index
of its line; the output and error files are then streamed from it in input order. Memory
holds 13 bytes a line (14 with lines never run); the disk holds the answers once. Lines never
run take their custom_ids from the input's line index (app.jobs.line_index), read once in
input order; an input uploaded before indexes has its run input's lines parsed instead.
"""

from __future__ import annotations

import array
import itertools
import tempfile
from collections.abc import Iterator
from typing import IO

from app.core.storage import ObjectStore, read_lines
from app.data.models import Job, Shard, Window
from app.jobs.line_index import LineIndex
from app.jobs.output_lines import batch_error_line, part_key
from app.jobs.run_order import read_order
from app.jobs.uploads import custom_ids_from

CHUNK_BYTES = 1 << 20  # what is handed to the store at a time


class InInputOrder:
    """A regrouped job's output and error lines, spooled, then read back in input order."""

    def __init__(
        self,
        store: ObjectStore,
        job: Job,
        runs: list[Window],
        shards: list[Shard],
        unrun_reason: tuple[str, str],
        index: LineIndex | None = None,
    ) -> None:
        assert job.run_input is not None
        self._store, self._job, self._runs, self._shards = store, job, runs, shards
        self._index = index  # the input's line index; None: uploaded before indexes
        self._run = job.run_input
        self._unrun_reason = unrun_reason
        self._spool: IO[bytes] | None = None
        total = job.request_total
        self._start = array.array("q", [-1]) * total  # where each input line's answer starts in the spool
        self._length = array.array("I", [0]) * total
        self._error = bytearray(total)  # 1: its answer is an error line

    def lines(self, errors: bool) -> Iterator[bytes]:
        """The output (or error) file's lines, in input order, in chunks."""
        spool = self._spooled()
        chunk: list[bytes] = []
        size = 0
        for index in range(len(self._start)):
            if self._start[index] < 0 or self._error[index] != errors:
                continue
            spool.seek(self._start[index])
            chunk.append(spool.read(self._length[index]))
            size += self._length[index]
            if size >= CHUNK_BYTES:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()

    def _spooled(self) -> IO[bytes]:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile(prefix=f"{self._job.id}-")  # noqa: SIM115 - closed by close()
            order = read_order(self._store, self._run.order_key)
            for index, line, is_error in self._every_line(order):
                self._note(index, line + b"\n", is_error)
            missing = sum(1 for start in self._start if start < 0)
            if missing:  # never write an output that silently lacks lines: finalization fails and is retried
                raise RuntimeError(f"{missing} of {len(self._start)} lines of {self._job.id} have no answer")
        return self._spool

    def _note(self, index: int, line: bytes, is_error: bool) -> None:
        assert self._spool is not None
        if self._start[index] >= 0:
            raise RuntimeError(f"line {index + 1} of {self._job.id} was answered twice")
        self._start[index] = self._spool.tell()
        self._length[index] = len(line)
        self._error[index] = is_error
        self._spool.write(line)

    def _every_line(self, order: array.array[int]) -> Iterator[tuple[int, bytes, bool]]:
        """(input index, line without its newline, whether it is an error line) of every line answered."""
        job_id = self._job.id
        for run in self._runs:
            out = read_lines(self._store, part_key(job_id, run.shard_index, run.seq, "out")) if run.completed else None
            err = read_lines(self._store, part_key(job_id, run.shard_index, run.seq, "err")) if run.failed else None
            failed = set(run.error_lines or ())
            for offset in range(run.completed + run.failed):
                is_error = offset in failed
                source = err if is_error else out
                assert source is not None, f"window {run.seq} of shard {run.shard_index} lacks a part"
                yield order[run.first_line + offset], next(source), is_error
        yield from self._unrun_lines(order)

    def _unrun_lines(self, order: array.array[int]) -> Iterator[tuple[int, bytes, bool]]:
        """The "never ran" lines: the shards' unrun run positions, as input indices."""
        code, message = self._unrun_reason
        if self._index is None:  # uploaded before line indexes: the run input's lines parsed for their custom_ids
            for shard in self._shards:
                if shard.next_line < shard.end_line:
                    run_ids = custom_ids_from(self._store, None, self._run.key, self._run.line_offsets, shard.next_line)
                    for position, custom_id in enumerate(
                        itertools.islice(run_ids, shard.end_line - shard.next_line), shard.next_line
                    ):
                        yield order[position], batch_error_line(custom_id, message, code).rstrip(b"\n"), True
            return
        never_ran = bytearray(len(order))  # by input index
        for shard in self._shards:
            for position in range(shard.next_line, shard.end_line):
                never_ran[order[position]] = 1
        first, last = never_ran.find(1), never_ran.rfind(1)
        if first < 0:
            return
        ids = itertools.islice(self._index.custom_ids_from(self._store, first), last + 1 - first)
        for index, custom_id in enumerate(ids, first):
            if never_ran[index]:
                yield index, batch_error_line(custom_id, message, code).rstrip(b"\n"), True
