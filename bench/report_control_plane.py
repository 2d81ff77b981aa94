"""The report's section for the control_plane scenario (issue 20): polls and batch creation
against `make run` while a job runs on the same cores, and the job's speed with the pollers."""

from __future__ import annotations

from typing import Any

from bench.report_sections import Section, _n, _table, _verdict

P99_GOAL_MS, MAX_GOAL_MS, CREATE_GOAL_SECONDS, SLOWDOWN_GOAL = 100.0, 1000.0, 1.0, 0.97


def control_plane_section(result: dict[str, Any] | None) -> Section:
    if not result:
        return [], []
    rows = []
    timed = all(r["polled"]["polls"].get("server_max_ms") is not None for r in result["rounds"])
    for number, found in enumerate(result["rounds"]):
        polls = found["polled"]["polls"]
        extra = (
            [_n(polls["server_p99_ms"], 1), _n(polls["server_max_ms"], 1), f"{polls['steal_seconds']:.2f}"]
            if timed
            else []
        )
        rows.append(
            [
                str(number),
                _n(polls["latency_p50_ms"], 1),
                _n(polls["latency_p99_ms"], 1),
                _n(polls["latency_max_ms"], 1),
                str(polls["errors"]),
                f"{found['polled']['second_create_seconds']:.3f}",
                _n(found["polled"]["tokens_per_second"]),
                _n(found["quiet"]["tokens_per_second"]),
                f"{found['polled_to_quiet']:.3f}",
                *extra,
            ]
        )
    lines = [
        f"`make run` itself (the launcher, its embedded Postgres, the API and a worker as processes) on this "
        f"machine's cores. A {result['lines']:,}-line chat job (max_tokens 4-{result['longest_max_tokens']}, "
        f"log-uniform) runs twice per round, interleaved: once with {result['clients']} clients polling it "
        f"over HTTP once a second for {result['poll_seconds']:.0f} s, once without; both times a second file "
        "of the same size is uploaded and its batch created 5 s in. The worker and its engine run at nice 10 "
        "(`ENGINE_NICE`) and the API's tokenizing in a process at nice 19, so polls, auth and state changes "
        "get the CPU first.",
        "",
        *_table(
            ["round", "p50 ms", "p99 ms", "max ms", "errors", "creation s", "job tok/s polled", "quiet", "ratio"]
            + (["API p99 ms", "API max ms", "stolen s"] if timed else []),
            rows,
        ),
    ]
    if timed:
        lines += [
            "The client's milliseconds are from sending a poll to reading its answer. *API p99 / max* are the "
            "API's own milliseconds for the same polls (its `Server-Timing` header: from the request reaching "
            "the app to its answer starting); *stolen s* is the CPU time the hypervisor took from this VM while "
            "the pollers ran (`/proc/stat` steal, both cores). A slow poll whose API time is small waited outside "
            "the app: in the kernel's scheduling, the event loop's queue, or a VM pause.",
            "",
        ]
    goals = [
        ["polls p99 during a job", f"< {P99_GOAL_MS:.0f} ms", f"{result['latency_p99_ms']:.1f} ms",
         _verdict(result["latency_p99_ms"] < P99_GOAL_MS)],
        ["slowest poll", f"< {MAX_GOAL_MS:.0f} ms", f"{result['latency_max_ms']:.1f} ms",
         _verdict(result["latency_max_ms"] < MAX_GOAL_MS)],
        ["poll errors", "0", str(result["errors"]), _verdict(result["errors"] == 0)],
        ["batch creation during a job", f"< {CREATE_GOAL_SECONDS:.0f} s",
         f"{result['create_seconds_max']:.3f} s", _verdict(result["create_seconds_max"] < CREATE_GOAL_SECONDS)],
        ["job tokens/s, polled / quiet", f"≥ {SLOWDOWN_GOAL}", f"{result['polled_to_quiet']:.3f}",
         _verdict(result["polled_to_quiet"] >= SLOWDOWN_GOAL)],
    ]  # fmt: skip
    return lines, goals
