"""The input is read once: an upload records where every N-th line starts, and each
shard reads its lines with a ranged read from the nearest one before it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.storage import LocalStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.jobs.results import results_page
from app.jobs.uploads import line_start
from tests.fakes import FakeEngine
from tests.helpers import completion_line, create_batch, download, jsonl, upload, wait_for_status
from worker.loop import WorkerLoop

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


class CountingStore(LocalStore):
    """A folder that counts the bytes read from each object."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: dict[str, int] = {}

    def read_chunks(self, key: str, start: int = 0) -> Iterator[bytes]:
        for chunk in super().read_chunks(key, start):
            self.read[key] = self.read.get(key, 0) + len(chunk)
            yield chunk


def test_every_shard_reads_only_its_own_lines_so_the_input_is_read_about_once(
    client: TestClient, records: Records, queue: JobQueue, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.jobs.uploads.LINE_OFFSET_EVERY", 10)
    monkeypatch.setattr("app.core.storage.CHUNK_BYTES", 256)  # reads in small chunks, as a large file would
    client.app.state.settings.shard_size = 50  # type: ignore[attr-defined]
    rows = [completion_line(f"r{i:03d}", f"line number {i} " + "x" * (i % 7)) for i in range(200)]
    file = upload(client, jsonl(rows))
    batch = create_batch(client, file["id"], batch_size=8)
    offsets = records.get_file(file["id"]).validation.line_offsets
    assert offsets is not None
    assert offsets.every == 10 and len(offsets.offsets) == 20
    assert line_start(offsets, 57) == (50, offsets.offsets[5])

    counting = CountingStore(store.root)
    loop = WorkerLoop(FakeEngine(), records, queue, counting, lease_seconds=60, heartbeat_seconds=5, poll_seconds=0.1)
    loop.register()
    while loop.run_once():
        pass

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert [line["custom_id"] for line in download(client, done["output_file_id"])] == [r["custom_id"] for r in rows]
    input_key = records.get_file(file["id"]).storage_key
    assert counting.read[input_key] <= 1.1 * file["bytes"] + 4 * 256  # four shards, each overreads a chunk at most


def test_a_page_of_a_cancelled_jobs_unrun_lines_reads_the_input_from_near_that_page(
    client: TestClient, records: Records, queue: JobQueue, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.jobs.uploads.LINE_OFFSET_EVERY", 10)
    monkeypatch.setattr("app.core.storage.CHUNK_BYTES", 256)
    rows = [completion_line(f"r{i:03d}", f"line number {i}") for i in range(200)]
    file = upload(client, jsonl(rows))
    batch = create_batch(client, file["id"])
    client.post(f"/v1/batches/{batch['id']}/cancel")
    wait_for_status(client, batch["id"], "cancelled")  # nothing ran: every line is unrun

    source = records.get_file(file["id"])
    counting = CountingStore(store.root)
    job = records.get_job(batch["id"])
    page = results_page(
        counting,
        job,
        [],
        records.shards(batch["id"]),
        source.storage_key,
        180,
        20,
        source.validation.line_offsets,
    )
    lines = list(page.lines)
    assert [json.loads(line)["custom_id"] for line in lines] == [f"r{i:03d}" for i in range(180, 200)]
    assert counting.read[source.storage_key] <= file["bytes"] // 4  # the last tenth, not the whole file
