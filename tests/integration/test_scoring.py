"""/v1/score and /v1/rerank batches through the API and a worker holding the real vLLM pooling
engine: the scores in the output file are what `LLM.score` gives run directly on the same
texts (on the demo embedding model, a bi-encoder: the cosine similarity of the embeddings)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

pytestmark = pytest.mark.engine

SCORE = "/v1/score"
RERANK = "/v1/rerank"
QUESTION = "What is the capital of France?"
DOCUMENTS = ["The Nile is a river in Africa.", "Paris is the capital of France.", "France is in Europe."]


def openai_line(custom_id: str, url: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def reference(llm: Any, first: str | list[str], second: str | list[str]) -> tuple[list[float], int]:
    """`LLM.score` run directly on a line's texts, as given (1 -> N left to vLLM), and the
    prompt tokens of its pairs."""
    outputs = llm.score(first, second, use_tqdm=False)
    return [out.outputs.score for out in outputs], sum(len(out.prompt_token_ids) for out in outputs)


def counting_score_calls(llm: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    score = llm.score

    def counted(first: list[str], second: list[str], **kwargs: Any) -> Any:
        calls.append(len(second))
        return score(first, second, **kwargs)

    monkeypatch.setattr(llm, "score", counted)
    return calls


def test_a_score_batch_gives_llm_scores_scores_in_vllms_shape(
    client: TestClient,
    settings: Settings,
    store: ObjectStore,
    embedding_engine: VllmEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = [
        openai_line("s0", SCORE, text_1=QUESTION, text_2=DOCUMENTS[:2]),  # 1 -> N
        openai_line("s1", SCORE, queries=["a cat sat", "fast cars"], documents=["a kitten sat", "slow trains"]),
        {"custom_id": "s2", "text_1": "hello", "text_2": "hello there"},  # plain, 1 -> 1
        openai_line("s3", SCORE, text_1="x", text_2="word " * 600),  # 602 tokens, past the model's 512
        openai_line("s4", SCORE, text_1="x", text_2="y", max_tokens_per_doc=5, model="demo-embed"),
    ]
    texts = {"s0": (QUESTION, DOCUMENTS[:2]), "s1": (["a cat sat", "fast cars"], ["a kitten sat", "slow trains"])}
    texts["s2"] = ("hello", "hello there")
    batch = create_batch(client, upload(client, jsonl(data))["id"], endpoint=SCORE, batch_size=2, pack_by_length=False)
    assert batch["model"] == "demo-embed" and batch["endpoint"] == SCORE

    llm = embedding_engine.llm
    calls = counting_score_calls(llm, monkeypatch)
    run_worker_until_idle(embedding_engine, settings, store)
    monkeypatch.undo()
    # Static batches of 2 lines: (s0, s1) in one N -> N call of 4 pairs, (s2, s3 refused when planned), (s4 refused).
    assert calls == [2 + 2, 1]

    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    output = download(client, done["output_file_id"])
    assert [line["custom_id"] for line in output] == ["s0", "s1", "s2"]
    prompt_tokens = 0
    for line in output:
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and body["object"] == "list" and body["model"] == "demo-embed"
        assert body["id"].startswith("score-") and isinstance(body["created"], int)
        expected, tokens = reference(llm, *texts[line["custom_id"]])
        assert [(item["index"], item["object"]) for item in body["data"]] == [
            (i, "score") for i in range(len(expected))
        ]
        assert np.allclose([item["score"] for item in body["data"]], expected, rtol=1e-4, atol=1e-6)
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        prompt_tokens += tokens
    paris, nile = output[0]["response"]["body"]["data"]
    assert paris["score"] < nile["score"] or paris["score"] > nile["score"]  # two different pairs

    errors = {line["custom_id"]: line["response"]["body"]["error"] for line in download(client, done["error_file_id"])}
    assert (errors["s3"]["param"], errors["s3"]["code"]) == ("text_2", "context_length_exceeded")
    assert errors["s4"]["param"] == "max_tokens_per_doc"

    stats = client.get(f"/v1/batches/{batch['id']}/stats").json()
    assert stats["static_batches"] == 2 and stats["prompt_tokens"] == prompt_tokens

    estimate = client.post(
        "/v1/batches", json={"input_file_id": batch["input_file_id"], "endpoint": SCORE, "dry_run": True}
    ).json()
    assert (estimate["lines"], estimate["runnable_lines"], estimate["failing_lines"]) == (5, 3, 2)
    # The estimate counts both texts of each pair; vLLM's usage also the pad token it puts between them.
    assert estimate["prompt_tokens"] == prompt_tokens - 5 and estimate["requested_output_tokens"] == 0


def test_a_rerank_batch_ranks_the_documents_as_llm_score_scores_them(
    client: TestClient, settings: Settings, store: ObjectStore, embedding_engine: VllmEngine
) -> None:
    data = [
        openai_line("r0", RERANK, query=QUESTION, documents=DOCUMENTS, top_n=2),
        {"custom_id": "r1", "query": "rivers", "documents": DOCUMENTS, "return_documents": False},  # plain
        openai_line("r2", RERANK, query="Europe", documents=DOCUMENTS[2:], top_n=0),
        openai_line("r3", RERANK, query="Europe", documents=DOCUMENTS, rank_fields=["text"]),  # not served
    ]
    batch = create_batch(client, upload(client, jsonl(data))["id"], endpoint=RERANK)
    run_worker_until_idle(embedding_engine, settings, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    output = {line["custom_id"]: line["response"]["body"] for line in download(client, done["output_file_id"])}
    for custom_id, top_n, with_documents in (("r0", 2, True), ("r1", 3, False), ("r2", 1, True)):
        row = next(r for r in data if r["custom_id"] == custom_id)
        fields = row.get("body", row)
        expected, tokens = reference(embedding_engine.llm, fields["query"], fields["documents"])
        ranked = sorted(range(len(expected)), key=lambda i: expected[i], reverse=True)[:top_n]
        body = output[custom_id]
        assert body["id"].startswith("rerank-") and body["model"] == "demo-embed"
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        assert [result["index"] for result in body["results"]] == ranked
        assert np.allclose([r["relevance_score"] for r in body["results"]], [expected[i] for i in ranked], rtol=1e-4)
        documents = [result.get("document") for result in body["results"]]
        assert documents == ([{"text": fields["documents"][i]} for i in ranked] if with_documents else [None] * top_n)
    assert output["r0"]["results"][0]["index"] == 1  # Paris answers the question best
    [error] = download(client, done["error_file_id"])
    assert error["custom_id"] == "r3" and error["response"]["body"]["error"]["param"] == "rank_fields"
