"""Static batches that overlap in the engine: the next one enters while the last one drains.

A strict static batch is one blocking `generate` call: as its short answers end, the engine
runs fewer and fewer sequences until the longest ends, and nothing new enters. Here a
shard's static batches are added to the running engine (`Engine.enqueue`) while it holds
fewer than two sets of `max_num_seqs` unfinished requests, so its scheduler always has a
full set to run and the next waiting, as it has when a vLLM user hands it every line at once. The static batch
stays the unit that is planned, recorded, resumed and reported: each window is recorded when
the last request of its last static batch ends, in input order, and at most
`max_in_flight` static batches are admitted and not yet recorded, so a crash loses those
alone (the next claimant resumes after the last recorded window).

Why the engine's own `add_request`/`step` (through `LLM.enqueue`) and not `AsyncLLM`: the
worker already holds one `LLM` for its whole life (strict mode, embeddings, LoRA adapters
and the engine checks use it), the loop is single-threaded and synchronous like the rest
of the shard runner, and `step` hands back each finished request as it ends with the same
`RequestOutput` that `generate` returns, so one code path builds every output line.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

from app.data.json_values import EngineTelemetry
from app.jobs.telemetry import combine
from worker.engine import Engine, EngineFailed, RequestRejected
from worker.windows import Generated, PlannedLines, PreparedWindow, merge_parts, set_refused_aside

PREFIX_BLOCK_TOKENS = 16  # vLLM's KV-cache block: its prefix cache shares whole blocks
MAX_PREFIX_BLOCKS = 64  # a prompt's first blocks are enough to tell a shared system prompt
QUEUED_SETS = 2  # the engine holds up to this many times max_num_seqs requests: one set runs, one waits


def prefix_blocks(prompt: list[int]) -> list[int]:
    """A prompt's leading full blocks, each named by a hash of everything up to its end (as
    vLLM's prefix cache names them: a block is shared only with its whole prefix)."""
    blocks, chained = [], 0
    end = min(len(prompt) // PREFIX_BLOCK_TOKENS, MAX_PREFIX_BLOCKS) * PREFIX_BLOCK_TOKENS
    for start in range(0, end, PREFIX_BLOCK_TOKENS):
        chained = hash((chained, tuple(prompt[start : start + PREFIX_BLOCK_TOKENS])))
        blocks.append(chained)
    return blocks


@dataclass
class StaticBatchRun:
    """One static batch in the engine: its planned lines and what came back so far."""

    lines: PlannedLines
    results: list[Any]  # the call's result of each line, None until it ends
    key: object = None  # whose it is (a held shard): several shards' static batches share the engine
    priority: int = 0  # its job's priority: vLLM's scheduler takes a higher one's waiting requests first
    refused: dict[int, RequestRejected] = field(default_factory=dict)
    waiting: int = 0  # requests enqueued and not yet finished
    seconds: float = 0.0  # its share of the engine's wall time (OverlappedEngine.step)

    @property
    def done(self) -> bool:
        return self.waiting == 0


@dataclass
class WindowRun:
    """A window whose static batches are entering or in the engine."""

    window: PreparedWindow
    batches: list[StaticBatchRun] = field(default_factory=list)
    all_admitted: bool = False  # every static batch of the window is in `batches`
    key: object = None  # whose it is (a held shard); each key's windows are handed back in order
    priority: int = 0  # its job's priority

    @property
    def done(self) -> bool:
        return self.all_admitted and all(batch.done for batch in self.batches)

    @property
    def seconds(self) -> float:
        return sum(batch.seconds for batch in self.batches)


class StaticBatchSource:
    """A shard's static batches in order, as their lines are planned: a plain window is one
    static batch, a packed window's static batches are planned one by one on the preparer.
    `ready()` says whether the next one can be taken without waiting for the preparer."""

    def __init__(
        self, next_window: Callable[[], Future[PreparedWindow] | None], key: object = None, priority: int = 0
    ) -> None:
        self._next_window = next_window
        self.key = key  # its windows' key in the OverlappedEngine
        self.priority = priority  # its job's
        self._pending = next_window()
        self._parts: deque[Future[PlannedLines]] = deque()
        self._current: WindowRun | None = None

    @property
    def exhausted(self) -> bool:
        return self._pending is None and not self._parts

    @property
    def last_window_taken(self) -> bool:
        """Its last window was taken (static batches of it may still wait to be taken)."""
        return self._pending is None

    def ready(self) -> bool:
        if self._parts:
            return any(part.done() for part in self._parts)
        if self._pending is None:
            return True
        if not self._pending.done():
            return False
        if self._pending.exception() is not None:
            return True  # `take` raises its error where the caller handles it
        planned = self._pending.result().planned
        return not planned or planned[0].done()

    def take(self, shared: Callable[[PlannedLines], int] | None = None) -> tuple[WindowRun, PlannedLines, bool] | None:
        """The next static batch: (its window, its lines, whether it starts a new window).
        Among a packed window's static batches already planned, the one with the most
        `shared` (prefix-cache blocks it shares with what runs) goes first; the window is
        recorded as one unit, so the order within it is free."""
        if self._parts:
            assert self._current is not None
            ready = [part for part in self._parts if part.done()] or [self._parts[0]]
            part = max(ready, key=lambda p: shared(p.result()) if shared else 0) if len(ready) > 1 else ready[0]
            self._parts.remove(part)
            self._current.all_admitted = not self._parts
            return self._current, part.result(), False
        if self._pending is None:
            return None
        window = self._pending.result()
        self._pending = self._next_window()  # the next window is prepared while this one runs
        run = WindowRun(window, key=self.key, priority=self.priority)
        self._current = run
        if not window.planned:
            run.all_admitted = True
            return run, window, True
        self._parts = deque(window.planned)
        window.planned = []
        lines = self._parts.popleft().result()
        run.all_admitted = not self._parts
        return run, lines, True

    def cancel(self) -> bool:
        """Stops preparing what was not taken; whether anything was left."""
        left = not self.exhausted
        for part in self._parts:
            part.cancel()
        pending, self._pending = self._pending, None
        if pending is not None and not pending.cancel() and pending.exception() is None:
            for planned in pending.result().planned:
                planned.cancel()
        self._parts.clear()
        return left


class OverlappedEngine:
    """Keeps the engine full from one StaticBatchSource, or from several (worker.sharing: the
    static batches of several held shards, each window under its shard's `key`); hands back
    each window once its last static batch ends, in the order its key's windows were taken.
    The crash bound (`max_in_flight` static batches admitted and not yet recorded) is per key:
    each job loses at most that many on a crash, whatever else shares the engine."""

    def __init__(self, engine: Engine, max_in_flight: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.engine = engine
        self.max_in_flight = max(1, max_in_flight)
        self.clock = clock
        self.windows: deque[WindowRun] = deque()  # taken and not yet handed back, in order
        self._requests: dict[str, tuple[StaticBatchRun, int]] = {}  # request id -> its batch and position
        self._unrecorded: Counter[object] = Counter()  # static batches admitted and not yet recorded, by key
        self._writes: deque[tuple[Future[Any], int, object]] = deque()  # handed back, being recorded: batches, key
        self._waiting: Counter[object] = Counter()  # requests in the engine, by key
        self._blocks: Counter[int] = Counter()  # prefix-cache blocks of the requests in the engine
        self._in_engine: list[StaticBatchRun] = []  # static batches with requests in the engine
        self._since: float | None = None  # the engine's time is counted from here

    def has_room(self, key: object = None) -> bool:
        """Whether another static batch of `key` may enter: the engine has fewer than
        QUEUED_SETS x max_num_seqs unfinished requests (a full set running and one waiting,
        so a slot freed in a step is refilled in the next, as when vLLM is handed every line
        at once), and `key`'s crash bound holds. A window being filled is recorded as one
        unit, so when it is its key's oldest, its own static batches may pass the bound."""
        return self.engine_has_room() and self.within_bound(key)

    def engine_has_room(self) -> bool:
        return self.engine.unfinished() < QUEUED_SETS * self.engine.max_num_seqs

    def within_bound(self, key: object = None) -> bool:
        while self._writes and self._writes[0][0].done():
            _, batches, done_key = self._writes.popleft()
            self._unrecorded[done_key] -= batches
        oldest = next((run for run in self.windows if run.key == key), None)
        filling = oldest is not None and not oldest.all_admitted
        return self._unrecorded[key] < self.max_in_flight or filling

    def in_engine(self, key: object = None) -> int:
        """Requests of `key` in the engine."""
        return self._waiting[key]

    @property
    def idle(self) -> bool:
        return not self._requests

    def admit(self, run: WindowRun, lines: PlannedLines, new_window: bool) -> None:
        """Adds a static batch's requests to the engine. A refused request is found by
        splitting the batch in halves, as strict mode does; it gets the engine's reason."""
        if new_window:
            self.windows.append(run)
        batch = StaticBatchRun(lines, [None] * len(lines.plans), key=run.key, priority=run.priority)
        run.batches.append(batch)
        if self.idle:
            self._since = self.clock()
        self._unrecorded[run.key] += 1
        self._enqueue(batch, list(range(len(lines.plans))))
        if batch.waiting:
            self._in_engine.append(batch)

    def _enqueue(self, batch: StaticBatchRun, positions: list[int]) -> None:
        if not positions:
            return
        lines = batch.lines
        try:
            ids = lines.call.enqueue(self.engine, [lines.plans[i] for i in positions], batch.priority)
        except RequestRejected as refusal:
            if len(positions) == 1:
                batch.refused[positions[0]] = refusal
                return
            middle = len(positions) // 2
            self._enqueue(batch, positions[:middle])
            self._enqueue(batch, positions[middle:])
            return
        except Exception as exc:
            indexes = [lines.plans[i].request.index for i in positions]
            raise EngineFailed(f"the engine failed adding lines {min(indexes) + 1}-{max(indexes) + 1}") from exc
        for request_id, position in zip(ids, positions, strict=True):
            self._requests[request_id] = (batch, position)
            self._blocks.update(prefix_blocks(lines.call.prefix(lines.plans[position])))
        batch.waiting += len(ids)
        self._waiting[batch.key] += len(ids)

    def step(self) -> None:
        """One engine step; the requests that ended are put in their static batches. The
        wall time since the last step is shared among the static batches in the engine by
        their unfinished requests, so a window's seconds are the engine time it used, and
        the windows' seconds add up to the engine's wall time."""
        try:
            finished = self.engine.step()
        except Exception as exc:
            raise EngineFailed("the engine failed in a step of overlapped static batches") from exc
        now = self.clock()
        elapsed = now - (self._since if self._since is not None else now)
        self._since = now
        total = sum(batch.waiting for batch in self._in_engine)
        for batch in self._in_engine:
            batch.seconds += elapsed * batch.waiting / total if total else 0.0
        for request_id, generation in finished:
            if request_id not in self._requests:  # aborted meanwhile
                continue
            batch, position = self._requests.pop(request_id)
            batch.results[position] = generation
            self._left(batch, position)
        self._in_engine = [batch for batch in self._in_engine if batch.waiting]

    def _left(self, batch: StaticBatchRun, position: int) -> None:
        """A request of `batch` left the engine (it ended, or was aborted)."""
        batch.waiting -= 1
        self._waiting[batch.key] -= 1
        lines = batch.lines
        for block in prefix_blocks(lines.call.prefix(lines.plans[position])):
            self._blocks[block] -= 1
            if self._blocks[block] <= 0:  # a long shard's blocks must not pile up
                del self._blocks[block]

    def shared_blocks(self, lines: PlannedLines) -> int:
        """Prefix-cache blocks the static batch's prompts share with the requests in the
        engine: the blocks the prefix cache most likely still holds for it."""
        total = 0
        for plan in lines.plans:
            for block in prefix_blocks(lines.call.prefix(plan)):
                if block not in self._blocks:
                    break
                total += 1
        return total

    def completed(self) -> Iterator[WindowRun]:
        """The windows whose every static batch has ended and that come first among their
        key's windows still in the engine, in the order they were taken."""
        while True:
            blocked: set[object] = set()
            for run in self.windows:
                if run.key in blocked:
                    continue
                if run.done:
                    break
                blocked.add(run.key)
            else:
                return
            self.windows.remove(run)
            yield run

    def recording(self, run: WindowRun, write: Future[Any]) -> None:
        """`run` is being recorded by `write`: its static batches count until it is done."""
        self._writes.append((write, len(run.batches), run.key))

    def wait_for_room(self) -> None:
        """Waits for the oldest recording, when only recordings stand in the way."""
        if self._writes:
            wait([self._writes[0][0]])

    def abort(self, key: object = None, everything: bool = True) -> None:
        """Drops every request in the engine (the worker stops), or (`everything` False)
        those of `key` alone (its job stopped, or its shard was given back): its windows not
        yet handed back are forgotten; the rest of the engine runs on."""
        if everything:
            if self._requests:
                self.engine.abort(list(self._requests))
            self._requests.clear()
            self.windows.clear()
            self._in_engine = []
            self._blocks.clear()
            self._waiting.clear()
            self._unrecorded = Counter()
            for _, count, written_key in self._writes:
                self._unrecorded[written_key] += count
            return
        mine = [request_id for request_id, (batch, _) in self._requests.items() if batch.key == key]
        if mine:
            self.engine.abort(mine)
        for request_id in mine:
            batch, position = self._requests.pop(request_id)
            self._left(batch, position)
        for run in [run for run in self.windows if run.key == key]:
            self.windows.remove(run)
            self._unrecorded[key] -= len(run.batches)
        self._in_engine = [batch for batch in self._in_engine if batch.waiting]


def run_windows(
    overlapped: OverlappedEngine,
    source: StaticBatchSource,
    record: Callable[[WindowRun], Future[Any]],
    should_stop: Callable[[], bool],
) -> bool:
    """Runs the source's static batches overlapped, calling `record` for each window in
    order as it ends (the future of its recording); returns whether it stopped early
    (`should_stop`) with work left."""

    def on_window(run: WindowRun) -> None:
        overlapped.recording(run, record(run))

    while True:
        if should_stop():
            left = bool(overlapped.windows)
            overlapped.abort()
            return source.cancel() or left
        # Admit while there is room; wait for the preparer only when the engine has nothing to do.
        while not source.exhausted and overlapped.has_room() and (overlapped.idle or source.ready()):
            taken = source.take(overlapped.shared_blocks)
            if taken is None:
                break
            overlapped.admit(*taken)
            for run in overlapped.completed():  # a window with nothing for the engine
                on_window(run)
        if overlapped.idle:
            for run in overlapped.completed():
                on_window(run)
            if source.exhausted and not overlapped.windows:
                return False
            if not overlapped.has_room():
                overlapped.wait_for_room()
            continue
        overlapped.step()
        for run in overlapped.completed():
            on_window(run)


def window_result(run: WindowRun, kv_cache_tokens: int | None) -> Generated:
    """A window whose static batches ran overlapped: the engine's refusals moved to its
    error lines, its lines and generations in input order."""
    parts: list[tuple[PlannedLines, list[Any]]] = []
    telemetry: list[EngineTelemetry | None] = []
    for batch in run.batches:
        results = [g for i, g in enumerate(batch.results) if i not in batch.refused and g is not None]
        set_refused_aside(batch.lines, batch.refused)
        parts.append((batch.lines, results))
        telemetry.append(batch.lines.call.telemetry(results, kv_cache_tokens))
    return Generated(merge_parts(run.window, parts), combine(telemetry), len(run.batches))
