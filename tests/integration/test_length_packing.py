"""Length-aware packing: lines of similar max_tokens share a static batch; output stays in
input order."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.records import Records
from app.jobs.endpoints.generate_call import Sampling
from tests.fakes import ByteTokenizer, FakeEngine
from tests.helpers import completion_line, create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

LONG, SHORT = 40, 2


def alternating_rows(count: int) -> list[dict[str, object]]:
    return [completion_line(f"r{i}", f"item {i}", max_tokens=LONG if i % 2 else SHORT) for i in range(count)]


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_packed_window_runs_short_lines_together_and_long_lines_together(
    client: TestClient, records: Records, settings: Settings, store: ObjectStore
) -> None:
    batch = create_batch(client, upload(client, jsonl(alternating_rows(16)))["id"], batch_size=4, pack_by_length=True)
    engine = FakeEngine()
    run_worker_until_idle(engine, settings, store)

    assert engine.max_tokens_per_call == [[SHORT] * 4, [SHORT] * 4, [LONG] * 4, [LONG] * 4]  # window of 8 batches
    done = client.get(f"/v1/batches/{batch['id']}").json()
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(16)]
    assert all(line["response"]["body"]["choices"][0]["text"] == f"item {i}"[::-1] for i, line in enumerate(output))


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_batch_created_without_pack_by_length_is_packed_in_windows_of_packing_window_batches(
    client: TestClient, records: Records, settings: Settings, store: ObjectStore
) -> None:
    client.app.state.settings.packing_window_batches = 2  # type: ignore[attr-defined]
    packed = create_batch(client, upload(client, jsonl(alternating_rows(16)))["id"], batch_size=4)
    assert records.get_job(packed["id"]).sampling_defaults.pack_window == 2
    engine = FakeEngine()
    run_worker_until_idle(engine, settings, store)
    assert engine.max_tokens_per_call == [[SHORT] * 4, [LONG] * 4] * 2  # two windows of 2 static batches

    unpacked = create_batch(
        client, upload(client, jsonl(alternating_rows(8)))["id"], batch_size=4, pack_by_length=False
    )
    assert records.get_job(unpacked["id"]).sampling_defaults.pack_window is None
    engine = FakeEngine()
    run_worker_until_idle(engine, settings, store)
    assert engine.max_tokens_per_call == [[SHORT, LONG] * 2] * 2  # consecutive lines


class FirstBatchFirst(FakeEngine):
    """Tokenizes a long line only once a static batch has started (or after WAIT_SECONDS):
    a worker that tokenizes a whole packed window before its first `generate` is caught
    waiting, and the order of events says so."""

    WAIT_SECONDS = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.events: list[str] = []
        self.tokenizer: ByteTokenizer = WaitingTokenizer(self)

    def generate(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Any]:
        self.events.append("generate")
        self.started.set()
        return super().generate(prompts, sampling)

    def enqueue(self, prompts: list[list[int]], sampling: list[Sampling], priority: int = 0) -> list[str]:
        self.events.append("generate")  # an overlapped static batch starts
        self.started.set()
        return super().enqueue(prompts, sampling, priority)


class WaitingTokenizer(ByteTokenizer):
    """The engine's tokenizer, holding back a long line ("item <odd>", alternating_rows's)."""

    def __init__(self, engine: FirstBatchFirst) -> None:
        self.engine = engine

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        long = int(text.rsplit(" ", 1)[-1]) % 2 == 1
        if long:
            self.engine.started.wait(self.engine.WAIT_SECONDS)
        self.engine.events.append("tokenize long" if long else "tokenize short")
        return super().encode(text, add_special_tokens)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_packed_window_starts_its_first_static_batch_before_tokenizing_the_rest(
    client: TestClient, records: Records, settings: Settings, store: ObjectStore
) -> None:
    batch = create_batch(client, upload(client, jsonl(alternating_rows(16)))["id"], batch_size=4, pack_by_length=True)
    engine = FirstBatchFirst()
    run_worker_until_idle(engine, settings, store)

    # The window's order comes from the parsed lines: the short lines of the first static
    # batch are tokenized, the batch runs, and the long lines are tokenized meanwhile.
    assert engine.events[:4] == ["tokenize short"] * 4
    assert engine.events.index("generate") < engine.events.index("tokenize long")
    assert engine.max_tokens_per_call == [[SHORT] * 4, [SHORT] * 4, [LONG] * 4, [LONG] * 4]
    output = download(client, client.get(f"/v1/batches/{batch['id']}").json()["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(16)]


@pytest.mark.engine
def test_packing_with_the_real_engine_keeps_every_answer_with_its_line(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = alternating_rows(24)
    batch = create_batch(client, upload(client, jsonl(rows))["id"], batch_size=4, pack_by_length=True)
    run_worker_until_idle(engine, settings, store)

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["request_counts"] == {"total": 24, "completed": 24, "failed": 0}
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == [row["custom_id"] for row in rows]
    for i, line in enumerate(output):
        used = line["response"]["body"]["usage"]["completion_tokens"]
        assert used <= (LONG if i % 2 else SHORT)
        assert line["response"]["body"]["usage"]["prompt_tokens"] == len(engine.tokenizer.encode(f"item {i}"))
    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert stats["windows"][0]["engine"]["static_batches"] == 6  # one window of 24 lines, 6 static batches
    # One word per concept: the job counts its 6 static batches in its one window, and so does /metrics.
    assert stats["windows"][0]["static_batches"] == 6
    assert stats["static_batches"] == 6 and len(stats["windows"]) == 1
    metrics = client.get("/metrics").text
    assert re.search(r'^llm_batch_static_batches_total\{worker="[^"]+"\} 6\.0$', metrics, re.MULTILINE), metrics
