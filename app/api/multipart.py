"""A multipart/form-data body read as it arrives, with python-multipart's streaming
parser, so an upload goes to storage without being spooled first.

`form_events` turns the body into events (a part starts, some of its data, it ends);
`PartReader` is a file object over one part's data for code running in a worker
thread (storage writes block): each read pulls the next events on the event loop, so
the body is read no faster than storage takes it and never held whole.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import anyio.from_thread
from anyio.lowlevel import EventLoopToken
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import InvalidRequest


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


FormEvent = PartStart | PartData | PartEnd


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data body; anything else is a 400."""
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "Send the upload as multipart/form-data with a `file` part.", param="file", code="invalid_value"
        )
    return boundary


def _text(raw: bytes) -> str:
    """Header text as browsers and HTTP clients send it: UTF-8, else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Collector:
    """python-multipart's callbacks, turned into a list of events."""

    def __init__(self) -> None:
        self.events: list[FormEvent] = []
        self.ended = False
        self._field = bytearray()
        self._value = bytearray()
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": lambda data, start, end: self.events.append(PartData(bytes(data[start:end]))),
            "on_part_end": lambda: self.events.append(PartEnd()),
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_end(self) -> None:
        if bytes(self._field).lower() == b"content-disposition":
            self._disposition = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        filename = options.get(b"filename")
        self.events.append(PartStart(_text(options.get(b"name", b"")), _text(filename) if filename else None))

    def _end(self) -> None:
        self.ended = True

    def take(self) -> list[FormEvent]:
        events, self.events = self.events, []
        return events


async def form_events(chunks: AsyncIterator[bytes], boundary: bytes) -> AsyncGenerator[FormEvent, None]:
    """The body's parts as events, parsed chunk by chunk as they arrive."""
    collector = _Collector()
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
            for event in collector.take():
                yield event
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidRequest(f"The multipart body is malformed: {exc}.", param="file", code="invalid_value") from None
    for event in collector.take():
        yield event
    if not collector.ended:
        raise InvalidRequest("The multipart body ends before its closing boundary.", param="file", code="invalid_value")


class PartReader:
    """A file object over the data of the part just started, for a worker thread: reads
    pull events from `events` on the event loop behind `token` until the part ends."""

    def __init__(self, events: AsyncIterator[FormEvent], token: EventLoopToken) -> None:
        self._events = events
        self._token = token
        self._buffer: list[bytes] = []
        self._buffered = 0
        self.ended = False

    def read(self, size: int = -1) -> bytes:
        if not self.ended and (size < 0 or self._buffered < size):
            chunks, self.ended = anyio.from_thread.run(self._pull, size - self._buffered, token=self._token)
            self._buffer += chunks
            self._buffered += sum(map(len, chunks))
        data = b"".join(self._buffer)
        if 0 <= size < len(data):
            data, rest = data[:size], data[size:]
            self._buffer, self._buffered = [rest], len(rest)
        else:
            self._buffer, self._buffered = [], 0
        return data

    def readable(self) -> bool:
        return True

    async def _pull(self, wanted: int) -> tuple[list[bytes], bool]:
        """At least `wanted` bytes of the part (all of it for a negative `wanted`), or
        less when it ends; and whether it ended. One trip to the event loop per read."""
        chunks: list[bytes] = []
        got = 0
        while wanted < 0 or got < wanted:
            event = await anext(self._events, None)
            if not isinstance(event, PartData):  # PartEnd; the body's end is an error raised by form_events
                return chunks, True
            chunks.append(event.data)
            got += len(event.data)
        return chunks, False

    async def drain(self) -> None:
        """Skips what is left of the part."""
        while not self.ended:
            _, self.ended = await self._pull(1 << 20)
