"""shared_prefix: chat lines that repeat long system prompts, through the service at its
defaults (vLLM's prefix cache on, each packing window ordered by worker.packing), through
the service in input order (`pack_by_length: false`: the same engine, prefix cache on, but
lines run as they come; vLLM 0.32 turns prefix caching on by default, so this is the
service as it was before issue 14), through the service in input order on a second engine
with PREFIX_CACHING off (what the prefix cache itself is worth), and through vLLM's
run-batch on the same file (its own defaults, prefix caching on, the engine loaded once and
timed per run as in the peer scenario).

    python -m bench.shared_prefix [--lines 2048] [--system-prompts 16] [--prefix-tokens 1000] [--runs 2]

The lines draw their system prompt at random from `--system-prompts` prompts of about
`--prefix-tokens` tokens each, so consecutive lines rarely share one. Goals (issue 14):
>= 1.5x the generated tokens/s of input order, and >= 1.5x run-batch's.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from bench.common import BenchConfig, fresh_database, medians, output_lengths, run_alone

CHAT_URL = "/v1/chat/completions"
BATCH_SIZE = 256
WORDS = [
    "the",
    "of",
    "report",
    "model",
    "data",
    "batch",
    "result",
    "token",
    "cache",
    "prefix",
    "window",
    "shard",
    "line",
    "answer",
    "review",
]


def system_prompts(tokenizer: Any, count: int, tokens: int, seed: int) -> list[str]:
    """`count` different system prompts of about `tokens` tokens each (seeded word salad)."""
    rng = random.Random(seed)
    found = []
    for k in range(count):
        words = [f"Instructions set {k}."]
        while len(tokenizer.encode(" ".join(words))) < tokens:
            words.extend(rng.choice(WORDS) for _ in range(50))
        found.append(" ".join(words))
    return found


def shared_prefix_lines(
    tokenizer: Any, model: str, lines: int, prompts: int, prefix_tokens: int, longest: int, seed: int
) -> list[dict[str, Any]]:
    systems = system_prompts(tokenizer, prompts, prefix_tokens, seed)
    rng = random.Random(seed + 1)
    lengths = output_lengths(lines, longest, seed)
    return [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": CHAT_URL,
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": f"question {i}: what does the report say?"},
                ],
                "max_tokens": lengths[i],
            },
        }
        for i in range(lines)
    ]


def run(config: BenchConfig) -> dict[str, Any]:
    from bench import peer, service_overhead
    from bench.engines import engine_settings, load_engine, max_num_seqs
    from worker.engine import VllmEngine

    lines_count = int(config.extra.get("prefix_lines", config.lines))
    prompts = int(config.extra.get("system_prompts", 16))
    prefix_tokens = int(config.extra.get("prefix_tokens", 1000))
    longest = int(config.extra.get("prefix_max_tokens", 64))
    # Both engines stay loaded (the idle one waits without using a core), so the runs interleave.
    engine = load_engine(config)
    uncached_engine = VllmEngine(engine_settings(config, prefix_caching=False))
    try:
        num_seqs, model_name = max_num_seqs(engine), engine.model_name
        lines = shared_prefix_lines(
            engine.llm.get_tokenizer(), model_name, lines_count, prompts, prefix_tokens, longest, config.seed
        )
        with tempfile.TemporaryDirectory() as tmp, fresh_database(config.database_url, "bench_prefix") as url:
            bench = service_overhead.ServiceBench(engine, config, url, Path(tmp) / "storage", BATCH_SIZE)
            uncached = service_overhead.ServiceBench(uncached_engine, config, url, Path(tmp) / "uncached", BATCH_SIZE)
            try:
                bench.run(lines[: peer.WARM_UP_LINES], CHAT_URL, pack_by_length=True)
                uncached.run(lines[: peer.WARM_UP_LINES], CHAT_URL, pack_by_length=False)
                grouped, input_order, no_cache = [], [], []
                for _ in range(config.runs):  # interleaved, so drift hits all alike
                    grouped.append(bench.run(lines, CHAT_URL, pack_by_length=True))
                    input_order.append(bench.run(lines, CHAT_URL, pack_by_length=False))
                    no_cache.append(uncached.run(lines, CHAT_URL, pack_by_length=False))
            finally:
                bench.close()
                uncached.close()
    finally:
        engine.shutdown()
        uncached_engine.shutdown()
    theirs = peer.run_vllm_batch(config, lines, model_name, num_seqs)
    ours, plain, bare = medians(grouped), medians(input_order), medians(no_cache)
    return {
        "lines": lines_count,
        "system_prompts": prompts,
        "prefix_tokens": prefix_tokens,
        "max_tokens": f"4..{longest}",
        "batch_size": BATCH_SIZE,
        "max_num_seqs": num_seqs,
        "defaults": {"median": ours, "runs": grouped},
        "input_order": {"median": plain, "runs": input_order},
        "input_order_no_prefix_cache": {"median": bare, "runs": no_cache},
        "run_batch": theirs,
        "ratio_to_input_order": round(ours["tokens_per_second"] / plain["tokens_per_second"], 3),
        "ratio_to_input_order_end_to_end": round(
            ours["end_to_end_tokens_per_second"] / plain["end_to_end_tokens_per_second"], 3
        ),
        "ratio_to_no_prefix_cache": round(ours["tokens_per_second"] / bare["tokens_per_second"], 3),
        "ratio_to_no_prefix_cache_end_to_end": round(
            ours["end_to_end_tokens_per_second"] / bare["end_to_end_tokens_per_second"], 3
        ),
        "ratio_to_run_batch": round(ours["end_to_end_tokens_per_second"] / theirs["median"]["tokens_per_second"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2048)
    parser.add_argument("--system-prompts", type=int, default=16)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=64, help="longest output of the seeded 4..N spread")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--model", default=None, help="default: the demo model")
    args = parser.parse_args()
    extra = {
        "prefix_lines": args.lines,
        "system_prompts": args.system_prompts,
        "prefix_tokens": args.prefix_tokens,
        "prefix_max_tokens": args.max_tokens,
    }
    result = run_alone("shared_prefix", run, args.runs, args.model, extra)
    sides = ("defaults", "input_order", "input_order_no_prefix_cache", "run_batch")
    print(json.dumps({k: v for k, v in result.items() if k not in sides}, indent=2))
    print(
        f"defaults / input order: {result['ratio_to_input_order']:.2f}x (goal 1.5x); "
        f"defaults / input order without the prefix cache: {result['ratio_to_no_prefix_cache']:.2f}x; "
        f"defaults / run-batch: {result['ratio_to_run_batch']:.2f}x (goal 1.5x)"
    )


if __name__ == "__main__":
    main()
