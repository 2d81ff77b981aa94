"""Embeddings through the official `openai` SDK against the service as processes: the API
and an embedding worker (`WORKER_KIND=embed`). The vectors that come back are what
`LLM.embed` gives for the same inputs, run directly afterwards on the run's shared
pooling engine."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import OpenAI
from openai.types import Batch, CreateEmbeddingResponse

from tests.e2e.conftest import Service
from tests.helpers import jsonl
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine
TERMINAL = {"completed", "failed", "expired", "cancelled"}
EMBEDDINGS = "/v1/embeddings"
INPUTS: dict[str, Any] = {
    "text": "hello the batch model",
    "texts": ["one two three", "what is a worker", "x"],
    "ids": [5, 6, 7, 8],
    "id-lists": [[10, 11], [12, 13, 14]],
}


def rows() -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [
        {"custom_id": name, "method": "POST", "url": EMBEDDINGS, "body": {"input": value}}
        for name, value in INPUTS.items()
    ]
    lines[1]["body"]["encoding_format"] = "base64"
    lines.insert(2, {"custom_id": "cut", "method": "POST", "url": EMBEDDINGS, "body": {"input": "x", "dimensions": 8}})
    return lines


def wait(client: OpenAI, batch_id: str) -> Batch:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(batch_id)


def direct_embeddings(embedding_engine: VllmEngine) -> dict[str, list[list[float]]]:
    """`LLM.embed` on the same inputs, on the run's shared pooling engine (built from the
    worker's settings: pooling runner, float32 without CUDA), in this process."""
    from vllm.inputs import TokensPrompt

    found = {}
    for name, value in INPUTS.items():
        items = [value] if isinstance(value, str) or isinstance(value[0], int) else value
        prompts = [item if isinstance(item, str) else TokensPrompt(prompt_token_ids=item) for item in items]
        found[name] = [out.outputs.embedding for out in embedding_engine.llm.embed(prompts, use_tqdm=False)]
    return found


def test_embeddings_through_the_openai_sdk_equal_llm_embed(
    service: Service, embedding_engine: VllmEngine, tmp_path: Path
) -> None:
    service.start_api()
    service.start_worker("embed-worker", WORKER_KIND="embed")
    ready = service.wait_for("/readyz").json()
    assert [w["model"] for w in ready["workers"]] == ["demo-embed"]

    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("sdk-user"), max_retries=0)
    path = tmp_path / "embeddings.jsonl"
    path.write_bytes(jsonl(rows()))
    file = client.files.create(file=path.open("rb"), purpose="batch")

    estimate = client.post(
        "/batches",
        body={"input_file_id": file.id, "endpoint": EMBEDDINGS, "completion_window": "24h", "dry_run": True},
        cast_to=object,
    )
    assert isinstance(estimate, dict) and estimate["object"] == "batch.estimate"
    assert (estimate["lines"], estimate["runnable_lines"], estimate["requested_output_tokens"]) == (5, 4, 0)
    assert [(f["custom_id"], f["param"]) for f in estimate["failing"]] == [("cut", "dimensions")]

    batch = client.batches.create(
        input_file_id=file.id, endpoint=EMBEDDINGS, completion_window="24h", extra_body={"batch_size": 2}
    )
    assert batch.to_dict()["model"] == "demo-embed"
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 4, 1)
    assert done.usage is not None and done.usage.output_tokens == 0
    output = [json.loads(line) for line in client.files.content(done.output_file_id or "").text.splitlines()]
    [error] = [json.loads(line) for line in client.files.content(done.error_file_id or "").text.splitlines()]
    service.stop()  # the cores go to the reference engine

    assert error["custom_id"] == "cut" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "dimensions"
    assert [line["custom_id"] for line in output] == list(INPUTS)
    assert estimate["prompt_tokens"] == done.usage.input_tokens
    expected = direct_embeddings(embedding_engine)
    for line in output:
        raw = line["response"]["body"]
        encoded = [isinstance(item["embedding"], str) for item in raw["data"]]
        assert encoded == [line["custom_id"] == "texts"] * len(raw["data"])  # it asked for base64
        for item in raw["data"]:
            if isinstance(item["embedding"], str):  # little-endian float32, as the SDK decodes it
                item["embedding"] = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4").tolist()
        body = CreateEmbeddingResponse.model_validate(raw, strict=False)
        assert body.object == "list" and body.model == "demo-embed"
        assert body.usage.prompt_tokens == body.usage.total_tokens > 0
        assert [item.index for item in body.data] == list(range(len(body.data)))
        vectors = [np.asarray(item.embedding) for item in body.data]
        wanted = expected[line["custom_id"]]
        assert len(vectors) == len(wanted)
        for got, want in zip(vectors, wanted, strict=True):
            assert got.shape == (128,) and np.allclose(got, want, rtol=1e-4, atol=1e-6)


SCORE_ROWS: list[dict[str, Any]] = [
    {"custom_id": "s0", "method": "POST", "url": "/v1/score",
     "body": {"text_1": "What is the capital of France?", "text_2": ["Paris is in France.", "A river."]}},
    {"custom_id": "s1", "method": "POST", "url": "/v1/score", "body": {"text_1": "a cat", "text_2": "a kitten"}},
]  # fmt: skip
RERANK_ROWS: list[dict[str, Any]] = [
    {"custom_id": "r0", "method": "POST", "url": "/v1/rerank",
     "body": {"query": "capital of France", "documents": ["The Nile.", "Paris, France.", "Europe."], "top_n": 2}},
]  # fmt: skip


def run_through_sdk(client: OpenAI, tmp_path: Path, endpoint: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    path = tmp_path / f"{endpoint.strip('/').replace('/', '-')}.jsonl"
    path.write_bytes(jsonl(rows))
    file = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    done = wait(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == len(rows), done
    return [json.loads(line) for line in client.files.content(done.output_file_id or "").text.splitlines()]


def test_score_and_rerank_through_the_openai_sdk_equal_llm_score_and_models_lists_the_worker(
    service: Service, embedding_engine: VllmEngine, tmp_path: Path
) -> None:
    service.start_api()
    service.start_worker("embed-worker", WORKER_KIND="embed")
    service.wait_for("/readyz")
    client = OpenAI(base_url=f"{service.url}/v1", api_key=service.api_key("sdk-user"), max_retries=0)

    [model] = client.models.list().data
    assert model.id == "demo-embed" and (model.model_extra or {})["kind"] == "embed"
    assert {"/v1/embeddings", "/v1/score", "/v1/rerank"} <= set((model.model_extra or {})["endpoints"])

    scored = run_through_sdk(client, tmp_path, "/v1/score", SCORE_ROWS)
    reranked = run_through_sdk(client, tmp_path, "/v1/rerank", RERANK_ROWS)
    service.stop()  # the cores go to the reference engine

    llm = embedding_engine.llm
    for line, row in zip(scored, SCORE_ROWS, strict=True):
        body = line["response"]["body"]
        want = [out.outputs.score for out in llm.score(row["body"]["text_1"], row["body"]["text_2"], use_tqdm=False)]
        assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(want)))
        assert np.allclose([d["score"] for d in body["data"]], want, rtol=1e-4, atol=1e-6)
    [line] = reranked
    documents = RERANK_ROWS[0]["body"]["documents"]
    want = [out.outputs.score for out in llm.score(RERANK_ROWS[0]["body"]["query"], documents, use_tqdm=False)]
    best = sorted(range(len(want)), key=lambda i: -want[i])[:2]
    results = line["response"]["body"]["results"]
    assert [r["index"] for r in results] == best
    assert np.allclose([r["relevance_score"] for r in results], [want[i] for i in best], rtol=1e-4, atol=1e-6)
    assert [r["document"]["text"] for r in results] == [documents[i] for i in best]
