"""The queued batch's estimate sample (app.jobs.estimate.spread_sample): one line from each run
of k, at a drawn place in the run, the same for the same file; every line of a small file."""

from __future__ import annotations

from app.jobs.estimate import spread_sample


def lines(count: int) -> list[bytes]:
    return [f"line {i}".encode() for i in range(count)]


def test_one_line_of_each_run_is_taken_at_a_drawn_place_the_same_for_the_same_file() -> None:
    taken = [index for index, _ in spread_sample(lines(1000), 1000, 100)]
    assert len(taken) == 100
    assert [index // 10 for index in taken] == list(range(100))  # one from each run of ten
    assert len({index % 10 for index in taken}) > 1  # not always the same place in the run
    assert taken == [index for index, _ in spread_sample(lines(1000), 1000, 100)]


def test_a_file_no_larger_than_the_sample_is_read_whole() -> None:
    assert [index for index, _ in spread_sample(lines(50), 50, 100)] == list(range(50))
    assert [raw for _, raw in spread_sample(lines(3), 3, 3)] == lines(3)
