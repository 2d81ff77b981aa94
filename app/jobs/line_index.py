"""A batch input file's line index: every line's custom_id, in line order, written by the
upload check beside the file (`<storage_key>.ids`), so what answers lines that never ran (a
cancelled or expired batch's, in finalization and in `/results`) and a batch's merged output
learn a line's custom_id without reading and parsing the input again.

The format: UTF-8 text, one entry a line (newline-ended). An entry is the custom_id as it is,
or, when it holds a newline or starts with a double quote, the JSON string of it (so an entry
that starts with `"` is JSON); a line without a valid custom_id (the check refused it) has an
empty entry. The byte offset of every `INDEX_EVERY`-th entry is stored with the upload check
(`UploadCheck.custom_ids`, a `LineOffsets`), so a range is one ranged read from the entry
nearest before it. A file uploaded before the index was written has none (`LineIndex.of` is
None) and its lines are parsed again as before. The index is not counted in the owner's
stored bytes (it is about a tenth of the file or less), and goes with the file
(`app.jobs.retention.remove_file_objects`).
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from app.core.line_offsets import LineOffsets
from app.core.storage import ObjectStore, iter_lines
from app.data.models import FileRecord

INDEX_EVERY = 8192  # entries between two recorded offsets
SPOOL_MEMORY_BYTES = 8 << 20  # the index is kept in memory up to this, then on local disk, until stored
_ENCODING = ("utf-8", "surrogatepass")  # a custom_id JSON may hold a lone surrogate ("\ud800")


def index_key(storage_key: str) -> str:
    """Where the line index of the file stored at `storage_key` lives."""
    return f"{storage_key}.ids"


def _entries(ids: list[str | None]) -> bytes:
    """Each id as its entry, newline between them. Most blocks need one join: only a block in which
    some id holds a newline or a quote is looked at id by id."""
    given = cast("list[str]", ids)
    try:
        text = "\n".join(given)
    except TypeError:  # a line without one
        given = ["" if custom_id is None else custom_id for custom_id in ids]
        text = "\n".join(given)
    if text.count("\n") != len(given) - 1 or '"' in text:  # one-character searches: the fast ones
        text = "\n".join(
            json.dumps(custom_id) if "\n" in custom_id or custom_id.startswith('"') else custom_id
            for custom_id in given
        )
    return text.encode(*_ENCODING)


def _custom_id(entry: bytes) -> str:
    text = entry.decode(*_ENCODING)
    return json.loads(text) if text.startswith('"') else text  # type: ignore[no-any-return]


class IndexWriter:
    """Collects the index as the upload check hands it blocks of ids (`add`), spooled locally
    (in memory while small) since the upload is still being written, then `store`s it."""

    def __init__(self) -> None:
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, prefix="line-index-")  # noqa: SIM115
        self._offsets = [0]
        self._entries = 0
        self._bytes = 0

    def add(self, ids: list[str | None]) -> None:
        """The next lines' custom_ids (None: a line without a valid one)."""
        start = 0
        while start < len(ids):
            if self._entries and self._entries % INDEX_EVERY == 0:
                self._offsets.append(self._bytes)
            room = INDEX_EVERY - self._entries % INDEX_EVERY  # entries before the next recorded offset
            piece = ids if start == 0 and len(ids) <= room else ids[start : start + room]
            data = _entries(piece)
            self._spool.write(data)
            self._spool.write(b"\n")  # apart: appending it to the block would copy the block
            self._bytes += len(data) + 1
            self._entries += len(piece)
            start += len(piece)

    @property
    def offsets(self) -> LineOffsets:
        return LineOffsets.of(INDEX_EVERY, self._offsets)

    def store(self, store: ObjectStore, storage_key: str) -> LineOffsets:
        """Writes the index beside the file stored at `storage_key`; returns its offsets."""
        self._spool.seek(0)
        store.put_stream(index_key(storage_key), self._spool)  # type: ignore[arg-type]
        return self.offsets

    def close(self) -> None:
        self._spool.close()


@dataclass(frozen=True)
class LineIndex:
    """A stored file's line index: where it is and where every INDEX_EVERY-th entry starts."""

    key: str
    offsets: LineOffsets

    @classmethod
    def of(cls, file: FileRecord) -> LineIndex | None:
        """The file's index; None for a file uploaded before indexes were written."""
        offsets = file.validation.custom_ids
        return cls(index_key(file.storage_key), offsets) if offsets is not None else None

    def custom_ids_from(self, store: ObjectStore, line: int) -> Iterator[str]:
        """The custom_ids of the file's lines from `line` (0-based) on."""
        return map(_custom_id, self._entries_from(store, line))

    def custom_ids_at(self, store: ObjectStore, lines: Iterable[int]) -> dict[int, str]:
        """line -> custom_id for the lines given, in one read of the index from the first of them
        to the last."""
        wanted = sorted(set(lines))
        found: dict[int, str] = {}
        if not wanted:
            return found
        targets = iter(wanted)
        target = next(targets)
        for line, entry in enumerate(self._entries_from(store, wanted[0]), wanted[0]):
            if line == target:
                found[line] = _custom_id(entry)
                next_target = next(targets, None)
                if next_target is None:
                    break
                target = next_target
        return found

    def _entries_from(self, store: ObjectStore, line: int) -> Iterator[bytes]:
        """The entries from `line` on: a ranged read from the recorded entry nearest before it."""
        first, start = self.offsets.start(line)
        return itertools.islice(iter_lines(store.read_chunks(self.key, start)), line - first, None)
