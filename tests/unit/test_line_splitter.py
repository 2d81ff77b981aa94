"""Cutting a stream of byte chunks into lines."""

from __future__ import annotations

import pytest

from app.core.errors import LineTooLong
from app.core.storage import LineSplitter, iter_lines


def test_a_line_split_across_chunks_comes_out_whole() -> None:
    assert list(iter_lines([b'{"a":', b"1}\n{", b'"b":2}\n'])) == [b'{"a":1}', b'{"b":2}']


def test_a_last_line_without_a_newline_counts() -> None:
    assert list(iter_lines([b"one\ntw", b"o"])) == [b"one", b"two"]


def test_empty_chunks_change_nothing() -> None:
    assert list(iter_lines([b"", b"a\n", b"", b"b", b""])) == [b"a", b"b"]
    assert list(iter_lines([])) == [] and list(iter_lines([b""])) == []


def test_carriage_returns_stay_in_the_line_bytes() -> None:
    assert list(iter_lines([b"a\r\n", b"b\r", b"\n"])) == [b"a\r", b"b\r"]


def test_empty_lines_between_newlines_are_kept() -> None:
    assert list(iter_lines([b"a\n\nb\n"])) == [b"a", b"", b"b"]


def test_the_splitter_holds_a_partial_line_until_finish() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"abc") == []
    assert splitter.feed(b"def\ngh") == [b"abcdef"]
    assert splitter.finish() == [b"gh"]
    assert splitter.finish() == []


def test_a_50_mb_line_fed_in_64_kib_chunks_is_kept_as_its_pieces_and_joined_once() -> None:
    chunk = b"x" * (64 << 10)
    chunks = [bytes(chunk) for _ in range((50 << 20) // len(chunk))]
    splitter = LineSplitter()
    for piece in chunks:
        assert splitter.feed(piece) == []
    # Nothing was copied while the line grew: the splitter holds the very chunks it was fed
    # (re-joining the partial line with every chunk copied 800 times 25 MB on average).
    assert len(splitter._pieces) == len(chunks)
    assert all(held is fed for held, fed in zip(splitter._pieces, chunks, strict=True))
    (line,) = splitter.feed(b"\n")
    assert len(line) == 50 << 20 and splitter._pieces == []
    assert splitter.lines == 1


def test_a_line_past_the_limit_is_refused_as_it_grows_naming_its_number() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b"short\nalso short\n0123") == [b"short", b"also short"]
    assert splitter.feed(b"456") == []
    with pytest.raises(LineTooLong) as caught:
        splitter.feed(b"7890")  # 11 bytes and no newline yet
    assert caught.value.line == 3
    assert caught.value.status_code == 413
    assert "Line 3 is longer than the limit of 10 bytes" in caught.value.message


def test_a_long_line_inside_one_chunk_is_named_too() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    with pytest.raises(LineTooLong) as caught:
        splitter.feed(b"ok\nfine\nmuch too long\nok\n")
    assert caught.value.line == 3


def test_a_line_of_exactly_the_limit_passes() -> None:
    splitter = LineSplitter(max_line_bytes=4)
    assert splitter.feed(b"abcd\nab") == [b"abcd"]
    assert splitter.feed(b"cd") == []
    assert splitter.finish() == [b"abcd"]
    assert splitter.lines == 2
