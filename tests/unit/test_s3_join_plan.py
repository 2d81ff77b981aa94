"""The plan of an S3 join (app.core.s3_join.plan_parts), at small sizes: its parts are the
sources' bytes in order, meet S3's part sizes, and copy every large object but for the
few bytes a short run before it borrows."""

from __future__ import annotations

import random

import pytest

from app.core import s3_join
from app.core.s3_join import Copy, Piece, Upload, plan_parts

MINIMUM, MAXIMUM, UPLOAD = 5, 40, 8


@pytest.fixture(autouse=True)
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_join, "S3_MIN_PART_BYTES", MINIMUM)
    monkeypatch.setattr(s3_join, "S3_MAX_PART_BYTES", MAXIMUM)


def pieces_of(part: Copy | Upload) -> tuple[Piece, ...]:
    return (part.piece,) if isinstance(part, Copy) else part.pieces


def check(sizes: list[int]) -> list[Copy | Upload]:
    named = [(f"k{i:03d}", size) for i, size in enumerate(sizes)]
    parts = plan_parts(named, upload_bytes=UPLOAD)
    # Every byte of every source, once, in order.
    covered = [(p.key, b) for part in parts for p in pieces_of(part) for b in range(p.start, p.end)]
    assert covered == [(key, b) for key, size in named for b in range(size)]
    lengths = [sum(p.size for p in pieces_of(part)) for part in parts]
    assert all(n >= MINIMUM for n in lengths[:-1]) and all(0 < n <= MAXIMUM for n in lengths)
    assert all(n <= UPLOAD for part, n in zip(parts, lengths, strict=True) if isinstance(part, Upload))  # memory
    # Read through the process: the small objects, plus under MINIMUM per large one.
    read = sum(n for part, n in zip(parts, lengths, strict=True) if isinstance(part, Upload))
    small = sum(size for size in sizes if size < MINIMUM)
    large = sum(1 for size in sizes if size >= MINIMUM)
    assert read <= small + large * (2 * MINIMUM - 1)
    return parts


def test_large_objects_are_copied_and_small_ones_uploaded_in_parts_of_the_upload_size() -> None:
    assert check([6, 1, 2, 3, 4, 20, 3]) == [
        Copy(Piece("k000", 0, 6)),
        Upload((Piece("k001", 0, 1), Piece("k002", 0, 2), Piece("k003", 0, 3), Piece("k004", 0, 2))),
        Upload((Piece("k004", 2, 4), Piece("k005", 0, 3))),  # too short alone: topped up from k005
        Copy(Piece("k005", 3, 20)),  # and the rest of k005 is copied
        Upload((Piece("k006", 0, 3),)),  # the last part may be short
    ]


def test_a_large_object_whose_rest_would_be_too_short_to_copy_is_read_whole() -> None:
    parts = check([1, 7, 5])
    assert parts == [Upload((Piece("k000", 0, 1), Piece("k001", 0, 7))), Copy(Piece("k002", 0, 5))]


def test_an_object_over_the_largest_part_is_copied_in_equal_ranges() -> None:
    assert check([100]) == [Copy(Piece("k000", 0, 33)), Copy(Piece("k000", 33, 66)), Copy(Piece("k000", 66, 100))]


def test_empty_objects_and_no_objects_make_no_parts() -> None:
    assert check([]) == []
    assert check([0, 0]) == []
    assert check([0, 6, 0]) == [Copy(Piece("k001", 0, 6))]


def test_any_mix_of_sizes_is_planned_within_the_rules() -> None:
    rng = random.Random(7)
    for _ in range(300):
        check([rng.choice([0, 1, 2, 4, 5, 6, 9, 17, 41, 90]) for _ in range(rng.randint(0, 30))])
