"""The upload check: every line of a batch input file checked as it streams to storage,
in about 10 bytes of memory a line, with duplicate custom_ids found at the end.

Well-formed lines are validated straight from their bytes with the same pydantic body
models `app.jobs.lines.parse_line` uses (each kind's, from `app.jobs.endpoints`); anything
the fast path refuses goes to `parse_line`, which names the error.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, Field, TypeAdapter, create_model

from app.core.line_offsets import LineOffsets
from app.data.json_values import JobError, UploadCheck
from app.jobs.endpoints import ENDPOINTS, PLAIN_FIELDS, Endpoint, plain_line_endpoints, plain_runs_on
from app.jobs.line_index import IndexWriter
from app.jobs.lines import MAX_CUSTOM_ID_CHARS, LineError, parse_line

# The upload check's fast path: a well-formed line validated straight from its bytes
# (pydantic's JSON parser, each kind's body model) without building a `Request`. It only
# ever accepts lines `parse_line` accepts; anything it refuses goes to `parse_line`, which
# names the error. The line models are built from the registry: an OpenAI line per kind
# (told apart by `url`), and a plain line per plain field (the body of the first kind that
# takes it at upload, plus custom_id).
_CustomId = Annotated[str, Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS, strict=True)]
_FORM_KEYS = frozenset({"url", "body", "method", *PLAIN_FIELDS})
HOT_PLAIN_FIELD = "prompt"  # the most common line: checked first, in `FileCheck.check_lines`' loop


def _openai_line(endpoint: Endpoint[Any]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "custom_id": (_CustomId, ...),
        "method": (Literal["POST"], "POST"),
        "url": (Literal[endpoint.url], ...),
        "body": (endpoint.body_model, ...),
    }
    return create_model(f"_{type(endpoint).__name__}Line", **fields)


def _plain_line(field: str) -> Callable[[bytes], Any]:
    """The validator of a plain line given by `field`: the body of the kind it is at upload,
    when only one kind has that field as its own or the first parses it (`parse_line` tries
    them in the same order), plus custom_id."""
    body = plain_line_endpoints(field)[0].body_model
    model = create_model(f"_Plain_{field}", __base__=body, custom_id=(_CustomId, ...))
    return model.__pydantic_validator__.validate_json  # type: ignore[no-any-return]


_OPENAI_LINES: Any = Union[tuple(_openai_line(endpoint) for endpoint in ENDPOINTS.values())]  # noqa: UP007
_OPENAI_LINE: TypeAdapter[Any] = TypeAdapter(Annotated[_OPENAI_LINES, Field(discriminator="url")])
# Other plain lines, in the order `parse_line` decides what a plain line gives.
_PLAIN_CHECKS = tuple(
    (f'"{name}"'.encode(), f"plain:{name}", _plain_line(name)) for name in PLAIN_FIELDS if name != HOT_PLAIN_FIELD
)


def _quick_check(raw: bytes) -> tuple[str, str | None] | None:
    """(custom_id, what `FileCheck.first_line_of` records for it) of a well-formed OpenAI
    or plain line, or None to leave the line to `parse_line`. The model to try is guessed
    from the bytes; the model decides."""
    try:
        if b'"body"' in raw:
            line = _OPENAI_LINE.validate_json(raw)
            return line.custom_id, line.url
        for token, used, validate in _PLAIN_CHECKS:
            if token in raw:
                plain = validate(raw)
                if plain.__pydantic_extra__ and not _FORM_KEYS.isdisjoint(plain.__pydantic_extra__):
                    return None
                return plain.custom_id, used
    except (ValueError, RecursionError):  # ValidationError, or JSON the parser cannot take
        return None
    return None


# Duplicate custom_ids, in about 10 bytes a line: Python's `hash()` of each id (64
# bits, keyed per process) in an array in line order, and a Bloom filter over them
# checked a block of lines at a time with numpy. A line whose hash may have been seen
# before is a suspect: its hash, and its id while few are kept, are set aside. At the
# end only the suspects' hashes are looked up in the whole array, which finds every
# duplicate line and the line its id first appeared on. Two different ids sharing a
# 64-bit hash would be reported as duplicates: about 1 in 10^6 for a file of 4 million
# lines, accepted.
NO_ID = -1  # the hash recorded for a line without a valid custom_id: `hash()` never returns -1
ID_BLOCK_LINES = 8192  # lines checked against the Bloom filter at once (their ids wait in a list)
BLOOM_BITS_PER_ID = 16  # at least; two probes give about 1% false suspects
BLOOM_MIN_BITS = 1 << 20
SUSPECT_IDS_KEPT = 65_536  # suspect ids kept for the messages; beyond, hashes only
LOOKUP_CHUNK_LINES = 1 << 16  # hashes handled at once past the block: 512 kB per numpy array


def _bloom_positions(hashes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The two bits a hash sets: its low bits and its bits from 32 up (`bits` is a power of 2)."""
    unsigned = hashes.view(np.uint64)
    return unsigned & np.uint64(bits - 1), (unsigned >> np.uint64(32)) & np.uint64(bits - 1)


class _DuplicateIds:
    def __init__(self) -> None:
        self.hashes = array("q")
        self.block_ids: list[str | None] = []  # the ids of the lines not yet checked against the filter
        self.index: IndexWriter | None = None  # handed each block of ids (the file's line index)
        self._bloom = np.zeros(BLOOM_MIN_BITS // 8, dtype=np.uint8)
        self._suspects = array("q")
        self._suspect_ids: dict[int, str] = {}

    def flush_if_full(self) -> None:
        if len(self.block_ids) >= ID_BLOCK_LINES:
            self._flush()

    def _flush(self) -> None:
        ids = self.block_ids
        self.block_ids = []
        if not ids:
            return
        if self.index is not None:
            self.index.add(ids)
        block = np.frombuffer(self.hashes, dtype=np.int64)[len(self.hashes) - len(ids) :]
        if len(self.hashes) * BLOOM_BITS_PER_ID > self._bloom.size * 8:
            self._grow_bloom(len(ids))
        bits = self._bloom.size * 8
        valid = block != NO_ID
        first, second = _bloom_positions(block, bits)
        seen = self._bit(first) & self._bit(second) & valid
        ordered = np.sort(block[valid])
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            seen |= np.isin(block, repeated)
        for i in np.flatnonzero(seen).tolist():
            suspect = int(block[i])
            self._suspects.append(suspect)
            if len(self._suspect_ids) < SUSPECT_IDS_KEPT:
                self._suspect_ids.setdefault(suspect, ids[i])  # type: ignore[arg-type]
        self._set_bits(first[valid])
        self._set_bits(second[valid])

    def _bit(self, positions: np.ndarray) -> np.ndarray:
        return (self._bloom[positions >> np.uint64(3)] >> (positions & np.uint64(7)).astype(np.uint8)) & 1 == 1

    def _set_bits(self, positions: np.ndarray) -> None:
        masks = np.left_shift(1, positions & np.uint64(7)).astype(np.uint8)
        np.bitwise_or.at(self._bloom, positions >> np.uint64(3), masks)

    def _grow_bloom(self, pending: int) -> None:
        """Doubles the filter until it has room, and sets again the bits of every hash before the pending block."""
        bits = self._bloom.size * 8
        while len(self.hashes) * BLOOM_BITS_PER_ID > bits:
            bits *= 2
        self._bloom = np.zeros(bits // 8, dtype=np.uint8)
        before = np.frombuffer(self.hashes, dtype=np.int64)[: len(self.hashes) - pending]
        for start in range(0, before.size, LOOKUP_CHUNK_LINES):
            chunk = before[start : start + LOOKUP_CHUNK_LINES]
            chunk = chunk[chunk != NO_ID]
            for positions in _bloom_positions(chunk, bits):
                self._set_bits(positions)

    def duplicates(self, max_errors: int) -> tuple[int, list[LineError]]:
        """How many lines repeat an earlier line's custom_id, and the first `max_errors` of them."""
        self._flush()
        if not self._suspects:
            return 0, []
        suspects = np.unique(np.frombuffer(self._suspects, dtype=np.int64))
        first_line = np.full(suspects.size, -1, dtype=np.int64)
        hashes = np.frombuffer(self.hashes, dtype=np.int64)
        count, errors = 0, list[LineError]()
        for start in range(0, hashes.size, LOOKUP_CHUNK_LINES):
            chunk = hashes[start : start + LOOKUP_CHUNK_LINES]
            where = np.minimum(np.searchsorted(suspects, chunk), suspects.size - 1)
            hit = np.flatnonzero(suspects[where] == chunk)
            which, lines = where[hit], hit + start
            new, first_in_chunk = np.unique(which, return_index=True)
            unset = first_line[new] < 0
            first_line[new[unset]] = lines[first_in_chunk[unset]]
            repeats = np.flatnonzero(first_line[which] != lines)
            count += repeats.size
            for k in repeats[: max_errors - len(errors)].tolist():
                errors.append(self._duplicate_error(int(lines[k]), int(first_line[which[k]]), int(suspects[which[k]])))
        return count, errors

    def _duplicate_error(self, index: int, first_index: int, suspect: int) -> LineError:
        custom_id = self._suspect_ids.get(suspect)
        named = f"custom_id {custom_id!r}" if custom_id is not None else "custom_id"
        return LineError(index + 1, f"duplicate {named} (first on line {first_index + 1})")


@dataclass
class FileCheck:
    """Checks a JSONL file line by line (`check` each line as it streams past), in
    about 10 bytes of memory a line; `summary` adds the duplicate custom_ids."""

    max_errors: int
    lines: int = 0
    error_count: int = 0
    errors: list[JobError] = field(default_factory=list)
    # endpoint, or "plain:<field>" for plain lines -> the first line using it
    first_line_of: dict[str, int] = field(default_factory=dict)
    index: IndexWriter | None = None  # given: every line's custom_id is written to it (app.jobs.line_index)
    _ids: _DuplicateIds = field(default_factory=_DuplicateIds)
    _finished: bool = False

    def __post_init__(self) -> None:
        self._ids.index = self.index

    def _error(self, err: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(err.as_error())

    def check(self, raw: bytes) -> None:
        self.check_lines((raw,))

    def check_lines(self, lines: Iterable[bytes]) -> None:
        """Checks the next lines of the file. This loop is the upload's hot path: a plain
        prompt line costs one pydantic call from its bytes and two appends."""
        validate_plain = _HOT_PLAIN
        hashes, ids = self._ids.hashes, self._ids.block_ids
        index = self.lines
        hot_seen = _HOT_USED in self.first_line_of
        for raw in lines:
            custom_id = None
            if b'"body"' not in raw:  # a plain chat line fails here, at a cost, then passes below
                try:
                    plain = validate_plain(raw)
                    if not plain.__pydantic_extra__ or _FORM_KEYS.isdisjoint(plain.__pydantic_extra__):
                        custom_id = plain.custom_id
                        if not hot_seen:
                            self.first_line_of.setdefault(_HOT_USED, index + 1)
                            hot_seen = True
                except (ValueError, RecursionError):  # ValidationError mostly; parse_line names it
                    pass
            if custom_id is None:
                custom_id = self._check_other(raw, index)
            hashes.append(NO_ID if custom_id is None else hash(custom_id))
            ids.append(custom_id)
            index += 1
        self.lines = index
        self._ids.flush_if_full()

    def _check_other(self, raw: bytes, index: int) -> str | None:
        """The custom_id of a line in another shape, or None with its error recorded."""
        quick = _quick_check(raw)
        if quick is not None:
            custom_id, used = quick
        elif not raw.strip():
            self._error(LineError(index + 1, "empty line"))
            return None
        else:
            try:
                request = parse_line(raw, index, None)
            except LineError as err:
                self._error(err)
                return None
            except (ValueError, RecursionError) as exc:  # whatever else breaks reading the line
                self._error(LineError(index + 1, f"cannot be read: {type(exc).__name__}"))
                return None
            custom_id = request.custom_id
            used = f"plain:{request.kind.required_field}" if request.plain else request.endpoint
        if used is not None and used not in self.first_line_of:
            self.first_line_of[used] = index + 1
        return custom_id

    def close(self) -> None:
        """Lets go of the line index's local spool (stored or not)."""
        if self.index is not None:
            self.index.close()

    def summary(self, line_offsets: LineOffsets | None = None) -> UploadCheck:
        """What the check found, stored on the file with `line_offsets` (where its lines start).
        With an `index`, every id has been handed to it once this returns."""
        if not self._finished:
            self._finished = True
            count, duplicates = self._ids.duplicates(self.max_errors)
            self.error_count += count
            merged = self.errors + [err.as_error() for err in duplicates]
            self.errors = sorted(merged, key=lambda e: e["line"])[: self.max_errors]
        checked = UploadCheck(errors=self.errors, error_count=self.error_count, first_line_of=self.first_line_of)
        return checked if line_offsets is None else checked.model_copy(update={"line_offsets": line_offsets})


_HOT_PLAIN = _plain_line(HOT_PLAIN_FIELD)
_HOT_USED = f"plain:{HOT_PLAIN_FIELD}"


def endpoint_mismatch(validation: UploadCheck, endpoint: str) -> LineError | None:
    """The first line of an uploaded file that cannot run on `endpoint`, if any."""
    for used, line in sorted(validation.first_line_of.items(), key=lambda kv: kv[1]):
        if used.startswith("plain:"):
            given = used.removeprefix("plain:")
            if endpoint not in plain_runs_on(given):
                return LineError(line, f"{given} given, but the batch's endpoint is {endpoint}", given)
        elif used != endpoint:
            return LineError(line, f"url {used} does not match the batch's endpoint {endpoint}", "url")
    return None
