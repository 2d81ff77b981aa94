"""A `/v1/loglikelihood` batch end to end on the real engine (vLLM's `prompt_logprobs`): what
greedy generation wrote (vLLM's own `generate`) is greedy and as likely as its tokens' logprobs
said, whether given as text or token ids; a continuation's
logprob follows the chain rule, an empty context is the model's start token, and a line with no
context token id is one error line."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.core.storage import ObjectStore
from tests.helpers import completion_line, create_batch, download, jsonl, run_worker_until_idle, upload
from worker.engine import VllmEngine

pytestmark = [pytest.mark.engine, pytest.mark.parametrize("store", ["local"], indirect=True)]

LOGLIKELIHOOD = "/v1/loglikelihood"
CONTEXT = "Once upon a time"


def run(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine, endpoint: str, rows: list[Any]
) -> dict[str, Any]:
    batch = create_batch(client, upload(client, jsonl(rows))["id"], endpoint=endpoint)
    run_worker_until_idle(engine, settings, store)
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed", done
    lines = download(client, done["output_file_id"])
    if done["error_file_id"]:
        lines += download(client, done["error_file_id"])
    assert len(lines) == len(rows)
    return {line["custom_id"]: line["response"]["body"] for line in lines}


def likelihood_line(custom_id: str, context: str | list[int], continuation: str | list[int]) -> dict[str, Any]:
    body = {"context": context, "continuation": continuation}
    return {"custom_id": custom_id, "method": "POST", "url": LOGLIKELIHOOD, "body": body}


def test_what_greedy_generation_wrote_is_greedy_and_as_likely_as_its_tokens_said(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    context = engine.tokenizer.encode(CONTEXT)
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=0)
    [generated] = engine.llm.generate([TokensPrompt(prompt_token_ids=context)], params, use_tqdm=False)
    ids = list(generated.outputs[0].token_ids)
    said = [entries[token].logprob for token, entries in zip(ids, generated.outputs[0].logprobs, strict=True)]

    rows = [likelihood_line("greedy", CONTEXT, ids), likelihood_line("as-ids", context, ids)]
    out = run(client, settings, store, engine, LOGLIKELIHOOD, rows)
    for line in out.values():
        assert line["object"] == "loglikelihood" and line["continuation_tokens"] == len(ids)
        assert line["is_greedy"] is True
        assert line["logprob"] == pytest.approx(sum(said), rel=0.02, abs=0.05)


def test_a_continuations_logprob_follows_the_chain_rule_and_a_line_without_context_is_an_error(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    first, second = " the cat", " sat down"
    tokens = engine.tokenizer
    assert tokens.encode(CONTEXT + first) == tokens.encode(CONTEXT) + tokens.encode(first, add_special_tokens=False)
    rows = [
        likelihood_line("whole", CONTEXT, first + second),
        likelihood_line("first", CONTEXT, first),
        likelihood_line("second", CONTEXT + first, second),
        {"custom_id": "plain", "context": CONTEXT, "continuation": first},  # a plain line
        likelihood_line("no-context", "", first),  # scored after the model's start token
        likelihood_line("no-context-ids", [], first),
    ]
    out = run(client, settings, store, engine, LOGLIKELIHOOD, rows)
    assert out["whole"]["logprob"] < 0 and out["first"]["logprob"] < 0
    assert out["whole"]["logprob"] == pytest.approx(
        out["first"]["logprob"] + out["second"]["logprob"], rel=0.02, abs=0.05
    )
    assert out["plain"]["logprob"] == pytest.approx(out["first"]["logprob"], rel=0.02, abs=0.05)
    assert out["whole"]["usage"]["prompt_tokens"] == len(tokens.encode(CONTEXT + first + second))
    start = tokens.bos_token_id if tokens.bos_token_id is not None else tokens.eos_token_id
    alone = likelihood_line("after-start", [start], first)
    assert out["no-context"]["usage"]["prompt_tokens"] == 1 + len(tokens.encode(first, add_special_tokens=False))
    scored_after_start = run(client, settings, store, engine, LOGLIKELIHOOD, [alone])["after-start"]
    assert out["no-context"]["logprob"] == pytest.approx(scored_after_start["logprob"], rel=0.02, abs=0.05)
    assert out["no-context-ids"]["error"]["param"] == "context"  # token ids are taken as given


def test_a_loglikelihood_batch_runs_strict_and_leaves_the_generation_rate_to_generation(
    client: TestClient, settings: Settings, store: ObjectStore, engine: VllmEngine
) -> None:
    rows = [likelihood_line(f"l{i}", CONTEXT, " the cat sat") for i in range(8)]
    likelihood = create_batch(client, upload(client, jsonl(rows))["id"], endpoint=LOGLIKELIHOOD, batch_size=4)
    assert likelihood["batching"] == "strict"  # its call does not overlap: a sharing worker need not stop for it
    prompts = [completion_line(f"c{i}", f"story {i}", max_tokens=8) for i in range(8)]
    generation = create_batch(client, upload(client, jsonl(prompts))["id"], batch_size=4)
    run_worker_until_idle(engine, settings, store)
    measured = client.get(f"/v1/batches/{generation['id']}/stats").json()["generation_tokens_per_second"]

    # The loglikelihood windows (no tokens generated, seconds spent) are another call's: a
    # completions estimate at the same batch size divides by the completions' rate alone.
    body = {"input_file_id": upload(client, jsonl(prompts))["id"], "endpoint": "/v1/completions"}
    dry = client.post("/v1/batches", json={**body, "completion_window": "24h", "dry_run": True, "batch_size": 4})
    assert dry.status_code == 200, dry.text
    assert dry.json()["tokens_per_second_per_worker"] == pytest.approx(measured, rel=0.01)
