"""Overlapped static batches (worker.overlap) on the scheduling fake engine: the next static
batch enters while the last drains, windows come back in input order, and no more than the
bound are ever unrecorded."""

from __future__ import annotations

from concurrent.futures import Future

from app.jobs.endpoints.completions import CompletionBody
from app.jobs.endpoints.generate_call import GENERATE, GenerationPlan, Sampling
from app.jobs.lines import Request
from tests.fakes import FakeEngine
from worker.overlap import OverlappedEngine, StaticBatchSource, WindowRun, run_windows, window_result
from worker.windows import PreparedWindow


def window(seq: int, lengths: list[int]) -> PreparedWindow:
    """A planned window of one static batch whose lines ask for `lengths` tokens."""
    first = seq * 100
    prepared = PreparedWindow(seq=seq, first_line=first, next_line=first + len(lengths), call=GENERATE)
    for offset, length in enumerate(lengths):
        index = first + offset
        body = CompletionBody(prompt=f"line {index}", max_tokens=length)
        request = Request(index, f"c{index}", "/v1/completions", body, plain=False)
        prepared.add(GenerationPlan(request, list(f"line {index}".encode()), Sampling(max_tokens=length)))
    return prepared


def with_prompt(plan: GenerationPlan, prompt: list[int]) -> GenerationPlan:
    return GenerationPlan(plan.request, prompt, plan.sampling)


def source_of(windows: list[PreparedWindow]) -> StaticBatchSource:
    remaining = iter(windows)

    def next_window() -> Future[PreparedWindow] | None:
        prepared = next(remaining, None)
        if prepared is None:
            return None
        done: Future[PreparedWindow] = Future()
        done.set_result(prepared)
        return done

    return StaticBatchSource(next_window)


def recorded(handed: list[WindowRun], run: WindowRun) -> Future[None]:
    """Records a window at once (the shard runner's writer takes a while)."""
    handed.append(run)
    done: Future[None] = Future()
    done.set_result(None)
    return done


def run(engine: FakeEngine, windows: list[PreparedWindow], in_flight: int) -> tuple[list[WindowRun], list[int]]:
    """The windows as handed back, and how many static batches were unrecorded at each step."""
    overlapped = OverlappedEngine(engine, in_flight)
    handed: list[WindowRun] = []
    unrecorded: list[int] = []

    def should_stop() -> bool:
        unrecorded.append(sum(len(w.batches) for w in overlapped.windows))
        return False

    assert run_windows(overlapped, source_of(windows), lambda run: recorded(handed, run), should_stop) is False
    return handed, unrecorded


def test_the_next_static_batch_enters_while_the_slowest_answer_of_the_last_runs() -> None:
    engine = FakeEngine(max_num_seqs=4)
    # Static batch 0 has one long answer; the others are short.
    handed, _ = run(engine, [window(0, [40, 2, 2, 2]), window(1, [2, 2, 2, 2]), window(2, [2, 2, 2, 2])], 8)

    # While batch 0's long answer ran, batches 1 and 2 came in and finished beside it.
    assert any({0, 1} <= step for step in engine.steps)
    assert any({0, 2} <= step for step in engine.steps)
    assert len(engine.steps) == 40  # the long answer's steps: nothing waited for it
    # Handed back in input order anyway, each with its own lines.
    assert [w.window.seq for w in handed] == [0, 1, 2]
    result = window_result(handed[0], None)
    assert [r.custom_id for r in handed[0].window.runnable] == ["c0", "c1", "c2", "c3"]
    assert [g.choices[0].text for g in result.generations] == [f"line {i}"[::-1] for i in range(4)]


def test_strict_static_batches_would_have_waited_for_the_slowest_answer() -> None:
    """The same work with one static batch in flight: the engine idles behind the long answer."""
    engine = FakeEngine(max_num_seqs=4)
    run(engine, [window(0, [40, 2, 2, 2]), window(1, [2, 2, 2, 2]), window(2, [2, 2, 2, 2])], 1)
    assert all(len(step) == 1 for step in engine.steps)
    assert len(engine.steps) == 40 + 2 + 2


def test_no_more_static_batches_than_the_bound_are_ever_unrecorded() -> None:
    engine = FakeEngine(max_num_seqs=8)
    windows = [window(0, [60, 2])] + [window(seq, [2, 2]) for seq in range(1, 12)]
    handed, unrecorded = run(engine, windows, 3)
    assert max(unrecorded) == 3  # the bound was reached, never passed
    assert [w.window.seq for w in handed] == list(range(12))


def test_a_window_that_needs_nothing_from_the_engine_is_handed_back_in_its_turn() -> None:
    engine = FakeEngine(max_num_seqs=4)
    empty = PreparedWindow(seq=1, first_line=100, next_line=102, call=GENERATE, errors={100: b"e\n", 101: b"e\n"})
    handed, _ = run(engine, [window(0, [5, 5]), empty, window(2, [1])], 8)
    assert [w.window.seq for w in handed] == [0, 1, 2]


def test_a_refused_request_is_split_out_and_the_rest_of_its_static_batch_runs() -> None:
    engine = FakeEngine(max_num_seqs=8)
    batch = window(0, [3, 3, 3, 3])
    batch.plans[2] = with_prompt(batch.plans[2], list(b"REFUSED"))
    [handed], _ = run(engine, [batch], 8)
    result = window_result(handed, None)
    assert [r.custom_id for r in handed.window.runnable] == ["c0", "c1", "c3"]
    assert len(result.generations) == 3 and list(handed.window.errors) == [2]


def test_the_windows_share_the_engines_wall_time_by_their_unfinished_requests() -> None:
    ticks = iter(range(1_000))
    engine = FakeEngine(max_num_seqs=8)
    overlapped = OverlappedEngine(engine, 8, clock=lambda: float(next(ticks)))
    handed: list[WindowRun] = []
    windows = [window(0, [10, 10]), window(1, [2, 2]), window(2, [5])]
    run_windows(overlapped, source_of(windows), lambda run: recorded(handed, run), lambda: False)

    seconds = [w.seconds for w in handed]
    assert all(s > 0 for s in seconds)
    assert sum(seconds) == 10  # ten steps, one tick each: all of it, counted once
    assert seconds[0] > seconds[2] > seconds[1]  # the longest answers held the engine longest


def packed_window(seq: int, parts: list[PreparedWindow]) -> PreparedWindow:
    """A packed window whose static batches are all planned already."""
    whole = PreparedWindow(seq=seq, first_line=parts[0].first_line, next_line=parts[-1].next_line, call=GENERATE)
    for part in parts:
        done: Future[PreparedWindow] = Future()
        done.set_result(part)
        whole.planned.append(done)
    return whole


def test_the_static_batch_sharing_the_most_prefix_blocks_with_what_runs_enters_next() -> None:
    system_a, system_b = list(range(32, 96)), list(range(40, 104))  # four blocks each

    def part(first: int, system: list[int], length: int) -> PreparedWindow:
        lines = window(first, [length, length])
        lines.plans = [with_prompt(plan, [*system, first, i]) for i, plan in enumerate(lines.plans)]
        return lines

    # Batches of system prompt A, B, A: once the first (A) runs, the second A goes before B.
    parts = [part(0, system_a, 30), part(1, system_b, 2), part(2, system_a, 2)]
    engine = FakeEngine(max_num_seqs=3)
    handed, _ = run(engine, [packed_window(0, parts)], 8)
    entered = [prompts[0][64] for prompts in engine.prompts_per_call]
    assert entered == [0, 2, 1]
    assert [r.index for r in handed[0].window.runnable] == sorted(r.index for r in handed[0].window.runnable)
