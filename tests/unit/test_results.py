"""Results so far: only the contiguous prefix of finished lines is served."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from app.jobs.results import _contiguous_end, _Stretch, _stretches, results_page


def stretches(*bounds: tuple[int, int]) -> list[_Stretch]:
    return [_Stretch(start, end, None) for start, end in bounds]


def window(first_line: int, completed: int, failed: int = 0) -> Any:
    return SimpleNamespace(first_line=first_line, completed=completed, failed=failed)


def shard(next_line: int, end_line: int) -> Any:
    return SimpleNamespace(next_line=next_line, end_line=end_line)


def job(status: str) -> Any:
    return SimpleNamespace(id="batch_1", status=status)


def test_adjoining_stretches_run_on_from_the_start() -> None:
    assert _contiguous_end(stretches((0, 4), (4, 10), (10, 12)), 0) == 12


def test_a_gap_holds_back_the_stretches_after_it() -> None:
    assert _contiguous_end(stretches((0, 4), (6, 10)), 0) == 4


def test_nothing_is_ready_when_the_first_stretch_starts_later() -> None:
    assert _contiguous_end(stretches((3, 8)), 0) == 0


def test_a_page_after_the_gap_serves_the_stretch_behind_it() -> None:
    assert _contiguous_end(stretches((0, 4), (6, 10)), 6) == 10
    assert _contiguous_end(stretches((0, 4), (4, 10)), 7) == 10


def test_a_window_covers_its_completed_and_failed_lines() -> None:
    got = _stretches(job("in_progress"), [window(5, 3, 2), window(0, 5)], [shard(10, 20)])
    assert [(s.start, s.end) for s in got] == [(0, 5), (5, 10)]


def test_an_ended_batch_adds_its_unrun_shard_lines_as_stretches() -> None:
    ran = window(0, 5)
    got = _stretches(job("cancelled"), [ran], [shard(5, 8), shard(20, 20)])
    assert [(s.start, s.end, s.run) for s in got] == [(0, 5, ran), (5, 8, None)]


def test_a_running_batchs_page_stops_at_the_gap_and_is_not_complete() -> None:
    page = results_page(None, job("in_progress"), [window(0, 4), window(6, 4)], [], "in", 0, 100)  # type: ignore[arg-type]
    assert (page.after, page.next_after, page.complete) == (0, 4, False)


def test_a_page_is_cut_at_the_limit() -> None:
    page = results_page(None, job("completed"), [window(0, 10)], [], "in", 2, 3)  # type: ignore[arg-type]
    assert (page.after, page.next_after, page.complete) == (2, 5, False)


def test_the_last_page_of_an_ended_batch_is_complete() -> None:
    page = results_page(None, job("cancelled"), [window(0, 4)], [shard(4, 9)], "in", 0, 100)  # type: ignore[arg-type]
    assert (page.next_after, page.complete) == (9, True)
