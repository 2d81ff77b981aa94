"""The service's one retry schedule (app.core.backoff.Backoff): first, doubling, capped, reset."""

from __future__ import annotations

from app.core.backoff import Backoff


def test_waits_double_up_to_the_cap_and_a_success_starts_over() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_a_schedule_kept_as_a_count_of_attempts_gives_the_same_waits() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [Backoff.after(n, 0.5, 3.0) for n in range(1, 6)] == [backoff.next() for _ in range(5)]
    assert Backoff.after(10_000, 0.5, 3.0) == 3.0  # no overflow however many attempts
