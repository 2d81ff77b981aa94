"""The line index (app.jobs.line_index): every line's custom_id written at upload, read back
from any line with a ranged read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.storage import LocalStore
from app.jobs.line_index import IndexWriter, LineIndex, index_key
from app.jobs.upload_check import FileCheck

ODD_IDS = ['say "hi"', '"quoted"', "two\nlines", "", "tab\there", "é ü 中", "\ud800lone", "back\\slash", "end\n"]


def written(tmp_path: Path, blocks: list[list[str | None]]) -> tuple[LocalStore, LineIndex]:
    store = LocalStore(tmp_path)
    writer = IndexWriter()
    for block in blocks:
        writer.add(block)
    offsets = writer.store(store, "files/f")
    writer.close()
    return store, LineIndex(index_key("files/f"), offsets)


def test_every_custom_id_reads_back_as_it_was_whatever_it_holds(tmp_path: Path) -> None:
    ids = [f"r{i}" for i in range(5)] + ODD_IDS
    store, index = written(tmp_path, [ids[:3], ids[3:]])
    assert list(index.custom_ids_from(store, 0)) == ids
    assert list(index.custom_ids_from(store, 7)) == ids[7:]


def test_a_line_without_a_custom_id_has_an_empty_entry(tmp_path: Path) -> None:
    store, index = written(tmp_path, [["a", None, "c"], [None]])
    assert list(index.custom_ids_from(store, 0)) == ["a", "", "c", ""]


def test_any_line_is_read_from_the_recorded_entry_nearest_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.jobs.line_index.INDEX_EVERY", 4)
    ids = [f"id-{i}" for i in range(23)]
    ids[9] = 'a "quoted"\nid'
    store, index = written(tmp_path, [ids[:1], ids[1:11], ids[11:12], ids[12:]])  # blocks across the marks
    assert index.offsets.every == 4 and len(index.offsets.offsets) == 6
    data = (tmp_path / "files/f.ids").read_bytes()
    for mark, offset in enumerate(index.offsets.offsets):  # each mark is the start of its entry
        assert data[offset:].split(b"\n", 1)[0] == ids[4 * mark].encode()
    for line in range(len(ids)):
        assert list(index.custom_ids_from(store, line)) == ids[line:]
    assert index.custom_ids_at(store, [17, 2, 9, 2]) == {2: "id-2", 9: ids[9], 17: "id-17"}
    assert index.custom_ids_at(store, []) == {}


def test_the_upload_check_hands_every_lines_custom_id_to_the_index(tmp_path: Path) -> None:
    lines = [json.dumps({"custom_id": custom_id or "x", "prompt": "p"}).encode() for custom_id in ODD_IDS]
    lines[3] = b"not json"  # a line the check refuses: no custom_id
    writer = IndexWriter()
    check = FileCheck(max_errors=10, index=writer)
    check.check_lines(lines[:4])
    check.check_lines(lines[4:])
    checked = check.summary()
    assert checked.error_count == 1 and checked.custom_ids is None  # the caller stores the index
    store = LocalStore(tmp_path)
    index = LineIndex(index_key("files/f"), writer.store(store, "files/f"))
    assert list(index.custom_ids_from(store, 0)) == [*ODD_IDS[:3], "", *ODD_IDS[4:]]
