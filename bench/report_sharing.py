"""docs/benchmarks.md's sections for sharing (small batches behind a big one), fleet,
rate_limits, documents_questions and polls_at_start."""

from __future__ import annotations

from typing import Any


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def sharing_section(result: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    if not result:
        return [], []
    settings = result["settings"]
    goal = result["small_goal_seconds"]
    other, urgent, rate = (
        result["small_other_owner_seconds"],
        result["small_priority_seconds"],
        result["big_rate_shared_over_alone"],
    )
    lines = [
        f"One worker at the service's defaults. A {settings['big_lines']:,}-line batch (max_tokens "
        f"{settings['max_tokens']}) runs; once its first window is recorded, a {settings['small_lines']}-line batch "
        "of another owner and a priority-50 batch of the same size are created. Times are the database's "
        "(created to completed), medians of the rounds; the small batch alone is the best of two runs on the "
        "idle worker.",
        "",
        "| figure | seconds |",
        "| --- | --- |",
        f"| small batch alone | {result['small_alone_seconds']:.2f} |",
        f"| small batch of another owner, behind the big one | {other:.2f} |",
        f"| small priority batch, behind the big one | {urgent:.2f} |",
        f"| goal for both (30 s + 3x alone) | {goal:.2f} |",
        f"| big batch alone | {result['big_alone_seconds']:.1f} "
        f"({result['big_alone_tokens_per_second']:,.0f} tokens/s) |",
        f"| big batch with the small ones beside it | {result['big_shared_seconds']:.1f} "
        f"({result['big_shared_tokens_per_second']:,.0f} tokens/s) |",
        "",
        f"The big batch was still running when both small ones had ended: "
        f"{'yes' if result['big_still_running_when_small_ones_ended'] else 'no'}. "
        f"Its tokens/s with them beside it: **{rate:.3f}** of its rate alone.",
        "",
    ]
    met = other <= goal and urgent <= goal
    return lines, [
        ["small batch behind a big one", f"≤ {goal:.1f} s", f"{max(other, urgent):.2f} s", _verdict(met)],
        ["big batch's rate, shared / alone", "≥ 0.95", f"{rate:.3f}", _verdict(rate >= 0.95)],
    ]


def fleet_section(result: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    if not result:
        return [], []
    s = result["settings"]
    lines = [
        f"{result['workers']} simulated workers ({result['processes']} processes of threads) claim, record and close "
        f"shards of {result['jobs']:,} jobs from {result['owners']} owners ({result['lines']:,} lines, sizes "
        f"log-uniform from 10 to {s['max_lines']:,}; {result['shards']:,} shards of {s['shard_size']:,}) through the "
        f"service's own queue statements, with an engine stand-in of {s['batch_seconds']} s per static batch "
        f"(`python -m bench.fleet`). Workers, Postgres and the client share this machine's cores.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| claims that collided (a shard held twice) | {result['duplicate_claims']} |",
        f"| jobs whose every line was recorded exactly once | {result['jobs_recorded_exactly']:,} of "
        f"{result['jobs']:,} |",
        f"| worker errors | {result['worker_errors']} |",
        f"| claims/s, windows/s | {result['claims_per_second']:,} / {result['windows_per_second']:,} |",
        f"| claim median / p99 | {result['claim_median_ms']} ms / {result['claim_p99_ms']} ms |",
        f"| owners' shares of engine time while all had work ({result['contended_seconds']} s) | "
        f"{result['owner_share_min']:.2f} to {result['owner_share_max']:.2f} of fair |",
        f"| Postgres CPU | {result['postgres_cpu_seconds']} s in all, {result['postgres_cpu_ms_per_worker_second']} ms "
        "per worker-second |",
        "",
    ]
    fair = result["owner_share_worst_deviation"] <= 0.10
    return lines, [
        [
            "claims that collided",
            "0",
            str(result["duplicate_claims"]),
            _verdict(result["duplicate_claims"] == 0),
        ],
        [
            "owners' share of the engine",
            "within 10 % of fair",
            f"{result['owner_share_worst_deviation']:.0%} off",
            _verdict(fair),
        ],
        ["claim p99", "< 50 ms", f"{result['claim_p99_ms']} ms", _verdict(result["claim_p99_ms"] < 50)],
    ]


def rate_limits_section(result: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    if not result:
        return [], []
    alone, loaded = result["polls_alone"], result["polls_beside_the_burst"]
    lines = [
        f"The API as a process (`python -m bench.rate_limits`, RATE_LIMIT_REQUESTS_PER_MINUTE="
        f"{result['settings']['rate']}): key B polls ten times a second, alone, then while key A sends "
        f"{result['burst_requests_per_second']:,} requests a second from 8 threads (answers: "
        f"{', '.join(f'{count:,} x {code}' for code, count in result['burst_answers'].items())}).",
        "",
        "| key B's polls | p50 | p99 |",
        "| --- | --- | --- |",
        f"| alone | {alone['p50_ms']} ms | {alone['p99_ms']} ms |",
        f"| beside A's burst | {loaded['p50_ms']} ms | {loaded['p99_ms']} ms |",
        "",
    ]
    return lines, []


def documents_questions_section(result: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    if not result:
        return [], []
    raw, ours = result["raw_chat_file_order"]["median"], result["service_defaults"]["median"]
    lines = [
        f"`python -m bench.documents_questions`: {result['documents']:,} documents of about "
        f"{result['document_tokens']:,} tokens, {result['questions']} questions each, every document with question 1 "
        f"first, then with question 2, ... (answers up to {result['answer_tokens']} tokens); the documents hold "
        f"{result['documents'] * result['document_tokens']:,} prefix tokens against a KV cache of "
        f"{result['kv_cache_tokens']:,}. Raw: one `LLM.chat` call with every line in file order (prefix cache on). "
        "The service: the job created as the API creates it (its lines regrouped by prompt prefix across the job, "
        "`app.jobs.run_order`), run by the worker loop at its defaults and finalized back into input order; timed "
        "from the create call to completed, on the same engine.",
        "",
        "| side | seconds | lines/s | prompt tokens cached |",
        "| --- | --- | --- | --- |",
        f"| raw `LLM.chat`, file order | {raw['seconds']:.1f} | {raw['lines_per_second']:.1f} | "
        f"{raw['cached_prompt_tokens']:,.0f} of {raw['prompt_tokens']:,.0f} |",
        f"| service at its defaults | {ours['seconds']:.1f} | {ours['lines_per_second']:.1f} | "
        f"{ours['cached_prompt_tokens']:,.0f} of {ours['prompt_tokens']:,.0f} |",
        "",
    ]
    goal = ["service / raw `LLM.chat`", ">= 2.5x", f"{result['ratio']:.2f}x"]
    return lines, [[*goal, _verdict(result["ratio"] >= 2.5)]]


def polls_at_start_section(result: dict[str, Any] | None) -> tuple[list[str], list[list[str]]]:
    if not result:
        return [], []
    lines = [
        "`python -m bench.polls_at_start`: `make run` itself at its defaults (the launcher, its embedded Postgres, the "
        "API, a generation and an embedding worker). From the moment `/readyz` first says ready, "
        f"{result['start_clients']} clients poll a batch once a second for {result['start_seconds']:.0f} s; then a "
        f"big chat batch runs, two 20-line batches (one a priority batch) join it in the engine, and "
        f"{result['share_clients']} clients poll the big one once a second for {result['share_seconds']:.0f} s. "
        f"{len(result['rounds'])} round(s); p99 is the median over rounds, max the worst.",
        "",
        "| phase | p99 | max |",
        "| --- | --- | --- |",
        f"| first {result['start_seconds']:.0f} s after ready, {result['start_clients']} clients | "
        f"{result['start_p99_ms']} ms | {result['start_max_ms']:.0f} ms |",
        f"| sharing, {result['share_clients']} clients | {result['sharing_p99_ms']} ms | "
        f"{result['sharing_max_ms']:.0f} ms |",
        "",
    ]
    goals = [
        ["polls p99, first 30 s after ready", "< 100 ms", f"{result['start_p99_ms']} ms"],
        ["polls p99 while sharing", "< 100 ms", f"{result['sharing_p99_ms']} ms"],
        ["slowest poll while sharing", "< 1000 ms", f"{result['sharing_max_ms']:.0f} ms"],
        ["poll errors", "0", str(result["errors"])],
    ]
    met = [
        result["start_p99_ms"] < 100,
        result["sharing_p99_ms"] < 100,
        result["sharing_max_ms"] < 1000,
        result["errors"] == 0,
    ]
    return lines, [[*goal, _verdict(ok)] for goal, ok in zip(goals, met, strict=True)]
