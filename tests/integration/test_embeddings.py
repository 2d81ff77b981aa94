"""/v1/embeddings batches through the API and a worker holding the real vLLM pooling engine:
the vectors in the output file are what `LLM.embed` gives for the same inputs."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.records import Records
from tests.fakes import FakeEngine
from tests.helpers import completion_line, create_batch, download, jsonl, run_worker_until_idle, upload
from tests.integration.conftest import client_for, make_settings
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine

EMBEDDINGS = "/v1/embeddings"


def embedding_line(custom_id: str, value: object, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": {"input": value, **body}}


def rows() -> list[dict[str, Any]]:
    return [
        embedding_line("e0", "hello the batch model"),
        embedding_line("e1", ["one two three", "what is a worker", "x"]),
        {"custom_id": "e2", "input": [5, 6, 7, 8]},  # the plain form
        embedding_line("e3", [[10, 11], [12, 13, 14]], encoding_format="base64"),
        embedding_line("e4", "queue", dimensions=64),  # the demo model is not a Matryoshka model
        embedding_line("e5", "word " * 600),  # 602 tokens, past the model's 512
        embedding_line("e6", "throughput", user="u1", model="demo-embed"),
    ]


def reference(llm: Any, value: object, **pooling: Any) -> tuple[list[list[float]], int]:
    """`LLM.embed` run directly on a line's input (strings as strings: vLLM tokenizes them),
    and the prompt tokens it counted."""
    from vllm import PoolingParams
    from vllm.inputs import TokensPrompt

    if isinstance(value, str):
        items: list[Any] = [value]
    elif all(isinstance(item, int) for item in value):  # type: ignore[union-attr]
        items = [TokensPrompt(prompt_token_ids=list(value))]  # type: ignore[call-overload]
    else:
        items = [item if isinstance(item, str) else TokensPrompt(prompt_token_ids=item) for item in value]  # type: ignore[union-attr]
    params = PoolingParams(**pooling) if pooling else None
    outputs = llm.embed(items, pooling_params=params, use_tqdm=False)
    return [out.outputs.embedding for out in outputs], sum(len(out.prompt_token_ids) for out in outputs)


def vectors_of(body: dict[str, Any]) -> list[list[float]]:
    found = []
    for position, item in enumerate(body["data"]):
        assert item["object"] == "embedding" and item["index"] == position
        vector = item["embedding"]
        if isinstance(vector, str):
            vector = np.frombuffer(base64.b64decode(vector), dtype="<f4").tolist()
        found.append(vector)
    return found


def assert_same_vectors(got: list[list[float]], expected: list[list[float]]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert len(mine) == len(theirs)
        assert np.allclose(mine, theirs, rtol=1e-4, atol=1e-6)


def test_an_embeddings_batch_gives_llm_embeds_vectors_in_openais_shape(
    client: TestClient,
    settings: Settings,
    store: ObjectStore,
    embedding_engine: VllmEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = rows()
    # Without length-aware packing, each window is one static batch of 2 lines in input order.
    batch = create_batch(
        client, upload(client, jsonl(data))["id"], endpoint=EMBEDDINGS, batch_size=2, pack_by_length=False
    )
    assert batch["model"] == "demo-embed" and batch["endpoint"] == EMBEDDINGS

    llm = embedding_engine.llm
    calls: list[int] = []
    embed = llm.embed

    def counted(prompts: list[Any], **kwargs: Any) -> Any:
        calls.append(len(prompts))
        return embed(prompts, **kwargs)

    monkeypatch.setattr(llm, "embed", counted)
    run_worker_until_idle(embedding_engine, settings, store)
    monkeypatch.undo()
    # Static batches of 2 lines: (e0, e1), (e2, e3), (e4, e5) fail when planned, (e6); one call each.
    assert calls == [1 + 3, 1 + 2, 1]

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 7, "completed": 5, "failed": 2}
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == ["e0", "e1", "e2", "e3", "e6"]
    prompt_tokens = 0
    for line in output:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["object"] == "list" and body["model"] == "demo-embed"
        row = next(r for r in data if r["custom_id"] == line["custom_id"])
        value = row["body"]["input"] if "body" in row else row["input"]
        expected, tokens = reference(llm, value)
        assert_same_vectors(vectors_of(body), expected)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        prompt_tokens += tokens
    assert isinstance(output[3]["response"]["body"]["data"][0]["embedding"], str)  # e3 asked for base64

    errors = {line["custom_id"]: line["response"] for line in download(client, done["error_file_id"])}
    assert set(errors) == {"e4", "e5"} and all(e["status_code"] == 400 for e in errors.values())
    assert errors["e4"]["body"]["error"]["param"] == "dimensions"
    assert "dimensions" in errors["e4"]["body"]["error"]["message"]
    assert errors["e5"]["body"]["error"]["code"] == "context_length_exceeded"

    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert stats["static_batches"] == 3 and stats["prompt_tokens"] == prompt_tokens

    estimate = client.post(
        "/v1/batches",
        json={"input_file_id": batch["input_file_id"], "endpoint": EMBEDDINGS, "batch_size": 2, "dry_run": True},
    ).json()
    assert (estimate["lines"], estimate["runnable_lines"], estimate["failing_lines"]) == (7, 5, 2)
    assert estimate["prompt_tokens"] == prompt_tokens and estimate["requested_output_tokens"] == 0
    assert [(f["custom_id"], f["param"]) for f in estimate["failing"]] == [("e4", "dimensions"), ("e5", "input")]
    assert estimate["eta_seconds"] is not None and "input tokens/s read" in estimate["basis"]


def test_an_embeddings_job_names_the_embedding_model_and_other_models_are_refused(
    client: TestClient, demo_model: Path, demo_embedding_model: Path
) -> None:
    embeddings = upload(client, jsonl([embedding_line("e", "hi")]))["id"]
    completions = upload(client, jsonl([completion_line("c", "hi")]))["id"]
    assert create_batch(client, embeddings, endpoint=EMBEDDINGS)["model"] == "demo-embed"
    assert create_batch(client, completions)["model"] == "demo-llama"
    wrong_models = [(embeddings, EMBEDDINGS, "demo-llama"), (completions, "/v1/completions", "demo-embed")]
    for file_id, endpoint, model in wrong_models:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", "model": model}
        response = client.post("/v1/batches", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == "model"
        assert f"not served here for {endpoint}" in response.json()["error"]["message"]

    mixed = create_batch(client, completions, endpoint=EMBEDDINGS)
    assert mixed["status"] == "failed" and mixed["errors"]["data"][0]["param"] == "url"


def test_each_kind_of_worker_claims_only_the_jobs_for_its_model(
    client: TestClient,
    settings: Settings,
    store: ObjectStore,
    records: Records,
    demo_model: Path,
    demo_embedding_model: Path,
) -> None:
    embeddings = create_batch(client, upload(client, jsonl([embedding_line("e", "hi")]))["id"], endpoint=EMBEDDINGS)
    completions = create_batch(client, upload(client, jsonl([completion_line("c", "hi")]))["id"])

    run_worker_until_idle(FakeEngine(kind="embed"), settings, store)
    assert records.get_job(embeddings["id"]).status == "completed"
    assert records.get_job(completions["id"]).status == "queued"
    run_worker_until_idle(FakeEngine(), settings, store)
    assert records.get_job(completions["id"]).status == "completed"


@pytest.fixture(scope="module")
def matryoshka_engine(demo_embedding_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmEngine]:
    """The demo embedding model declared a Matryoshka model (vectors may be cut to 32, 64 or 128)."""
    folder = tmp_path_factory.mktemp("models") / "demo-embed-matryoshka"
    shutil.copytree(demo_embedding_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [32, 64, 128]}))
    engine = VllmEngine(Settings(worker_kind="embed", embedding_model=str(folder)))
    yield engine
    engine.shutdown()


def test_on_a_matryoshka_model_dimensions_shorten_the_vectors_as_llm_embed_does(
    database_url: str, store: ObjectStore, records: Records, matryoshka_engine: VllmEngine
) -> None:
    settings = make_settings(database_url, store, embedding_served_model_name=matryoshka_engine.model_name)
    app = create_app(settings)
    with TestClient(app):
        client = client_for(app, records, "alice")
        done = run_matryoshka_batch(client, settings, store, matryoshka_engine)
    llm = matryoshka_engine.llm
    output = {line["custom_id"]: line["response"]["body"] for line in download(client, done["output_file_id"])}
    assert_same_vectors(vectors_of(output["short"]), reference(llm, ["one two", "three"], dimensions=32)[0])
    assert [len(v) for v in vectors_of(output["short"])] == [32, 32]
    assert_same_vectors(vectors_of(output["full"]), reference(llm, "one two")[0])
    [error] = download(client, done["error_file_id"])
    assert error["custom_id"] == "odd" and error["response"]["body"]["error"]["param"] == "dimensions"


def run_matryoshka_batch(client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine) -> Any:
    data = [
        embedding_line("short", ["one two", "three"], dimensions=32),
        embedding_line("full", "one two"),
        embedding_line("odd", "one two", dimensions=48),
    ]
    batch = create_batch(client, upload(client, jsonl(data))["id"], endpoint=EMBEDDINGS)
    assert batch["model"] == engine.model_name and batch["status"] != "failed"
    run_worker_until_idle(engine, settings, store)
    done: dict[str, Any] = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    return done


def test_retrying_an_embeddings_batch_with_truncate_prompts_embeds_the_start_of_a_long_input(
    client: TestClient, settings: Settings, store: ObjectStore, embedding_engine: VllmEngine
) -> None:
    data = [embedding_line("long", "word " * 600), embedding_line("cut", "x", dimensions=8)]
    parent = create_batch(client, upload(client, jsonl(data))["id"], endpoint=EMBEDDINGS)
    run_worker_until_idle(embedding_engine, settings, store)
    assert client.get(f"/v1/batches/{parent['id']}").json()["request_counts"]["failed"] == 2

    refused = client.post(f"/v1/batches/{parent['id']}/retry", json={"max_tokens": 8})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
    child = client.post(f"/v1/batches/{parent['id']}/retry", json={"truncate_prompts": True}).json()
    assert child["endpoint"] == EMBEDDINGS and child["model"] == "demo-embed"
    run_worker_until_idle(embedding_engine, settings, store)

    done = client.get(f"/v1/batches/{child['id']}").json()
    [line] = download(client, done["output_file_id"])
    ids = embedding_engine.tokenizer.encode("word " * 600)[:512]
    assert line["custom_id"] == "long" and line["response"]["body"]["usage"]["prompt_tokens"] == 512
    assert_same_vectors(vectors_of(line["response"]["body"]), reference(embedding_engine.llm, ids)[0])
    [error] = download(client, done["error_file_id"])
    assert error["custom_id"] == "cut" and error["response"]["body"]["error"]["param"] == "dimensions"
    merged = client.get(f"/v1/batches/{parent['id']}/merged_output").text.splitlines()
    assert [json.loads(m)["custom_id"] for m in merged] == ["long"]
