"""`llm_batch_queue_lines{model=...}`, what the workers' autoscaler reads (deploy/overlays/keda):
the input lines not yet recorded of queued or in-progress batches, per model."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from app.data.models import Worker
from app.data.records import Records
from tests.helpers import completion_line, create_batch, jsonl, upload


def queue_lines(client: TestClient) -> dict[str, float]:
    """Each model's figure, as Prometheus would read it from /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    [family] = [f for f in text_string_to_metric_families(response.text) if f.name == "llm_batch_queue_lines"]
    return {sample.labels["model"]: sample.value for sample in family.samples}


def batch_of(client: TestClient, lines: int) -> dict[str, object]:
    rows = [completion_line(f"r{i}", "x") for i in range(lines)]
    return create_batch(client, upload(client, jsonl(rows))["id"])


def record_lines(records: Records, batch_id: str, lines: int) -> None:
    """What a worker's recorded window does to the queue: `lines` more of one shard are done."""
    with records.db.session() as session:
        result = session.execute(
            text(
                "UPDATE shards SET next_line = next_line + :lines WHERE id = (SELECT id FROM shards "
                "WHERE job_id = :job AND end_line - next_line >= :lines ORDER BY index LIMIT 1)"
            ),
            {"lines": lines, "job": batch_id},
        )
        assert result.rowcount == 1  # type: ignore[attr-defined]


def test_the_per_model_figure_is_the_lines_queued_and_drops_as_windows_are_recorded(
    client: TestClient, records: Records
) -> None:
    assert queue_lines(client) == {}  # nothing queued, no worker: no model to report
    first, second = batch_of(client, 7), batch_of(client, 5)
    model = str(first["model"])
    assert second["model"] == model
    assert queue_lines(client) == {model: 12}

    record_lines(records, str(first["id"]), 3)
    assert queue_lines(client) == {model: 9}
    assert "llm_batch_queue_depth_lines 9.0" in client.get("/metrics").text  # the total agrees


def test_a_cancelled_batch_is_not_counted(client: TestClient) -> None:
    kept, cancelled = batch_of(client, 4), batch_of(client, 6)
    assert queue_lines(client) == {str(kept["model"]): 10}
    response = client.post(f"/v1/batches/{cancelled['id']}/cancel")
    assert response.status_code == 200, response.text
    assert queue_lines(client) == {str(kept["model"]): 4}


def test_a_model_that_a_worker_serves_reads_zero_once_its_work_is_done(client: TestClient, records: Records) -> None:
    batch = batch_of(client, 3)
    model = str(batch["model"])
    for worker_id, served in (("w-same", model), ("w-other", "other-model")):
        records.register_worker(
            Worker(id=worker_id, host="h", pid=1, model=served, tensor_parallel_size=1, status="ready")
        )
    assert queue_lines(client) == {model: 3, "other-model": 0}

    record_lines(records, str(batch["id"]), 3)  # every line recorded: the model stays, at 0
    assert queue_lines(client) == {model: 0, "other-model": 0}
