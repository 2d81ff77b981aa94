"""The order a job's lines run in: lines that share a prompt prefix run together across the
whole job, whatever order the file gives them in.

vLLM's prefix cache computes a shared prefix once only while it stays in the KV cache. A
file written question-major (every document with question 1, then every document with
question 2, ...) repeats each document's prefix a whole file apart, long after it was
evicted, so each document is computed once per question. Worker-side packing groups lines
within one window only. So when a job is created, its lines are ordered by their prompts'
prefixes, level by level (the first 256 characters, then up to 1 KiB, 4 KiB, 16 KiB), each
group in order of first appearance and each line's place within its group kept. A file
already grouped keeps its order and gets no run input, as does one whose lines repeat a
prefix only within REGROUP_DISTANCE_LINES lines (a setting, 256 by default: they run close enough for the
prefix cache to still hold it). Otherwise the job's *run input* is
written: the input's lines in that order (byte for byte) and the order itself. Shards and
windows then count lines of the run input, so everything that runs, records and resumes
is unchanged; finalization puts the answers back in input order (app.jobs.reordered), and
`/results` pages of such a job come in run order (each line carries its custom_id).

The order is computed from each line's prompt text (its endpoint's `packing_prompt`), so
it costs one more read and parse of the file at create time; files over
RUN_ORDER_MAX_LINES lines run in input order, grouped within each window only.
"""

from __future__ import annotations

import array
import logging
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence

from app.core.line_offsets import LineOffsets
from app.core.storage import ObjectStore, put_hashed, read_lines
from app.data.json_values import RunInput
from app.jobs.lines import parse_line

log = logging.getLogger(__name__)

RUN_ORDER_MAX_LINES = 200_000  # above it, a file runs in input order (its order would cost the create call seconds)
PREFIX_LEVELS_CHARS = (256, 1024, 4096, 16384)  # a prompt's text is grouped by its start at each of these lengths
PREFIX_LEVELS_TOKENS = (64, 256, 1024, 4096)  # the same for a prompt given as token ids
RUN_LINE_OFFSET_EVERY = 1024  # the run input's recorded line starts (a shard reads from the nearest before it)


def prefix_path(prompt: str | list[int] | None) -> tuple[int, ...]:
    """The hashes of a prompt's start at each level (a line without a prompt: none)."""
    if prompt is None:
        return ()
    levels = PREFIX_LEVELS_TOKENS if isinstance(prompt, list) else PREFIX_LEVELS_CHARS
    path = []
    for length in levels:
        path.append(hash(tuple(prompt[:length]) if isinstance(prompt, list) else prompt[:length]))
        if len(prompt) <= length:
            break
    return tuple(path)


def grouped_order(paths: Sequence[tuple[int, ...]], distance: int = 0) -> list[int] | None:
    """The input indices in the order they run: lines whose prompts start alike side by side,
    groups in order of first appearance at every level, lines in input order within a group.
    None when that would gain nothing: it is the input order, or no more than 1 % of the
    lines last shared their longest prefix more than `distance` lines before them (nearer
    lines run together or close enough for the prefix cache to still hold what they share)."""
    if not _far_from_their_prefix(paths, distance):
        return None
    ranks: list[dict[tuple[int, ...], int]] = [{} for _ in range(max((len(p) for p in paths), default=0))]

    def key(index: int) -> tuple[int, ...]:
        path = paths[index]
        return tuple(ranks[level].setdefault(path[: level + 1], len(ranks[level])) for level in range(len(path)))

    keys = [key(index) for index in range(len(paths))]  # ranks are given in input order
    order = sorted(range(len(paths)), key=lambda index: (keys[index], index))
    return None if all(position == index for position, index in enumerate(order)) else order


def _far_from_their_prefix(paths: Sequence[tuple[int, ...]], distance: int) -> bool:
    """Whether over 1 % of the lines last shared their longest shared prefix over `distance` lines before."""
    last_seen: dict[tuple[int, ...], int] = {}
    far = 0
    for index, path in enumerate(paths):
        nearest = None
        for level in range(len(path), 0, -1):  # the longest prefix seen before
            nearest = last_seen.get(path[:level])
            if nearest is not None:
                break
        if nearest is not None and index - nearest > distance:
            far += 1
        for level in range(1, len(path) + 1):
            last_seen[path[:level]] = index
    return far * 100 > len(paths)


def prompt_paths(lines: Iterable[bytes], endpoint: str) -> list[tuple[int, ...]]:
    """Each line's prefix path; a line that does not parse has none (it is answered as an
    error wherever it runs)."""
    paths = []
    for index, raw in enumerate(lines):
        try:
            request = parse_line(raw, index, endpoint)
            paths.append(prefix_path(request.kind.packing_prompt(request.body)))
        except Exception:
            paths.append(())
    return paths


def write_run_input(
    store: ObjectStore, job_id: str, input_key: str, endpoint: str, line_count: int, distance: int
) -> RunInput | None:
    """Orders a new job's lines by prefix and writes its run input; None when the input's
    own order is kept (see grouped_order; `distance` 0 or over RUN_ORDER_MAX_LINES lines)."""
    if line_count > RUN_ORDER_MAX_LINES or line_count < 2 or distance <= 0:
        return None
    # One read of the input: its lines go to a local copy (memory holds 12 bytes a line, not
    # the lines) while their prompts are read; the run input is then written from the copy.
    with tempfile.TemporaryFile(prefix=f"{job_id}-input-") as copy:
        starts, lengths = array.array("q"), array.array("I")

        def copied(lines: Iterable[bytes]) -> Iterator[bytes]:
            for line in lines:
                starts.append(copy.tell())
                lengths.append(len(line))
                copy.write(line)
                yield line

        order = grouped_order(prompt_paths(copied(read_lines(store, input_key)), endpoint), distance)
        if order is None:
            return None
        offsets, position = [], 0
        for run_position, index in enumerate(order):
            if run_position % RUN_LINE_OFFSET_EVERY == 0:
                offsets.append(position)
            position += lengths[index] + 1
        run = RunInput(
            key=f"batches/{job_id}/run_input.jsonl",
            order_key=f"batches/{job_id}/run_order.u32",
            line_offsets=LineOffsets.of(RUN_LINE_OFFSET_EVERY, offsets),
        )

        def in_run_order() -> Iterator[bytes]:
            for start in range(0, len(order), 4096):
                chunk = []
                for index in order[start : start + 4096]:
                    copy.seek(starts[index])
                    chunk.append(copy.read(lengths[index]) + b"\n")
                yield b"".join(chunk)

        put_hashed(store, run.key, in_run_order())
    store.put_bytes(run.order_key, order_bytes(order))
    log.info("job %s: %d lines regrouped by prompt prefix for the run", job_id, len(order))
    return run


def order_bytes(order: Sequence[int]) -> bytes:
    """The order as stored: little-endian uint32."""
    stored = array.array("I", order)
    if sys.byteorder != "little":  # pragma: no cover - every host this runs on is little-endian
        stored.byteswap()
    return stored.tobytes()


def read_order(store: ObjectStore, order_key: str, start: int = 0, stop: int | None = None) -> array.array[int]:
    """A stored order: the input index of each line of the run input, or (`start`, `stop`) of
    run positions `start` to `stop`, with a ranged read."""
    wanted = None if stop is None else 4 * (stop - start)
    chunks, got = [], 0
    for chunk in store.read_chunks(order_key, 4 * start):
        chunks.append(chunk)
        got += len(chunk)
        if wanted is not None and got >= wanted:
            break
    data = b"".join(chunks)
    order = array.array("I")
    order.frombytes(data if wanted is None else data[:wanted])
    if sys.byteorder != "little":  # pragma: no cover
        order.byteswap()
    return order
