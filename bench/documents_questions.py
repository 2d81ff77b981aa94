"""documents_questions, written question-major: every document with question 1, then every
document with question 2, ... Each prompt is a long document (about `--document-tokens`)
followed by a short question, so a document's prefix is shared by its questions but repeated
a whole file apart, and the file's documents hold more prefix than the KV cache does.

Two sides on the same engine (the worker's settings, with a KV cache of `--kv-cache-mib`,
128 MiB by default: about 130,000 of the demo model's tokens, under the documents' prefixes;
on this 2-core machine prefill runs at about 5,000 tokens/s, so the issue's 1,000 documents
would take raw alone 20 minutes, and 200 documents with a smaller cache keep the same regime):
- raw: one `LLM.chat` call with every line in file order (vLLM's prefix cache on, its
  default): the best a user does without the service;
- the service at its defaults (the job created as the API creates it: lines regrouped by
  prompt prefix across the job, app.jobs.run_order; then shards, windows, the worker loop
  and finalization), timed from the create call to the job completed.

    python -m bench.documents_questions [--documents 200] [--questions 4] [--document-tokens 1500]

Goal (issue 26): the service >= 2.5x raw's lines per second.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchConfig, fresh_database, medians, run_alone

CHAT_URL = "/v1/chat/completions"
WORDS = ["the", "report", "model", "data", "result", "review", "budget", "plan", "team", "quarter", "risk", "growth"]


def question_major(
    tokenizer: Any, documents: int, questions: int, document_tokens: int, max_tokens: int, seed: int
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    sample = " ".join(rng.choice(WORDS) for _ in range(1000))
    words_per_token = 1000 / len(tokenizer.encode(sample))
    words = int(document_tokens * words_per_token)
    texts = [f"Document {d}. " + " ".join(rng.choice(WORDS) for _ in range(words)) for d in range(documents)]
    return [
        {
            "custom_id": f"doc{d}-q{q}",
            "method": "POST",
            "url": CHAT_URL,
            "body": {
                "messages": [{"role": "user", "content": f"{texts[d]}\n\nQuestion {q}: what does it say?"}],
                "max_tokens": max_tokens,
            },
        }
        for q in range(questions)
        for d in range(documents)
    ]


def raw_chat(engine: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Every line in one `LLM.chat` call, in file order."""
    from vllm import SamplingParams

    conversations = [row["body"]["messages"] for row in rows]
    params = [SamplingParams(max_tokens=row["body"]["max_tokens"]) for row in rows]
    began = time.perf_counter()
    outputs = engine.llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - began
    return {
        "seconds": seconds,
        "lines_per_second": len(rows) / seconds,
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
        "prompt_tokens": sum(len(o.prompt_token_ids or ()) for o in outputs),
    }


def run(config: BenchConfig) -> dict[str, Any]:
    from bench import service_overhead
    from bench.engines import engine_settings
    from worker.engine import VllmEngine

    documents = int(config.extra.get("documents", 200))
    questions = int(config.extra.get("questions", 4))
    document_tokens = int(config.extra.get("document_tokens", 1500))
    max_tokens = int(config.extra.get("answer_tokens", 8))
    kv_bytes = int(config.extra.get("kv_cache_mib", 128)) << 20
    engine = VllmEngine(engine_settings(config, kv_cache_memory_bytes=kv_bytes))
    try:
        rows = question_major(
            engine.llm.get_tokenizer(), documents, questions, document_tokens, max_tokens, config.seed
        )
        raw_chat(engine, rows[:64])  # warm-up
        with tempfile.TemporaryDirectory() as tmp, fresh_database(config.database_url, "bench_documents") as url:
            bench = service_overhead.ServiceBench(engine, config, url, Path(tmp) / "storage", None)
            bench.settings.kv_cache_memory_bytes = kv_bytes
            bench.settings.shard_size = 2048  # the service's default (ServiceBench runs one shard)
            raw, ours = [], []
            try:
                for _ in range(config.runs):  # interleaved, so drift hits both alike
                    raw.append(raw_chat(engine, rows))
                    started = time.perf_counter()
                    measured = service_overhead.service_run(
                        engine, bench.records, bench.store, bench.settings, rows, CHAT_URL, True, regroup=True
                    )
                    seconds = time.perf_counter() - started
                    ours.append(measured | {"seconds": seconds, "lines_per_second": len(rows) / seconds})
            finally:
                bench.close()
        kv_tokens = engine.kv_cache_tokens
    finally:
        engine.shutdown()
    theirs, service = medians(raw), medians(ours)
    return {
        "documents": documents,
        "questions": questions,
        "document_tokens": document_tokens,
        "answer_tokens": max_tokens,
        "kv_cache_tokens": kv_tokens,
        "raw_chat_file_order": {"median": theirs, "runs": raw},
        "service_defaults": {"median": service, "runs": ours},
        "ratio": round(service["lines_per_second"] / theirs["lines_per_second"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--document-tokens", type=int, default=1500)
    parser.add_argument("--answer-tokens", type=int, default=8, help="max_tokens of each answer")
    parser.add_argument("--kv-cache-mib", type=int, default=128, help="the engine's KV cache, both sides")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--model", default=None, help="default: the demo model")
    args = parser.parse_args()
    extra = {
        "documents": args.documents,
        "questions": args.questions,
        "document_tokens": args.document_tokens,
        "answer_tokens": args.answer_tokens,
        "kv_cache_mib": args.kv_cache_mib,
    }
    result = run_alone("documents_questions", run, args.runs, args.model, extra)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    raw, ours = result["raw_chat_file_order"]["median"], result["service_defaults"]["median"]
    print(
        f"raw LLM.chat in file order: {raw['lines_per_second']:.1f} lines/s ({raw['cached_prompt_tokens']:.0f} of "
        f"{raw['prompt_tokens']:.0f} prompt tokens cached); service at its defaults: {ours['lines_per_second']:.1f} "
        f"lines/s ({ours['cached_prompt_tokens']:.0f} of {ours['prompt_tokens']:.0f} cached); "
        f"ratio {result['ratio']:.2f}x (goal 2.5x)"
    )


if __name__ == "__main__":
    main()
