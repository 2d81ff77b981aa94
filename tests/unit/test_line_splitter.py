"""Cutting a stream of byte chunks into lines."""

from __future__ import annotations

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
