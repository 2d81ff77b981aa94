"""The report's section for the ceiling scenario (issue 19): the service at its defaults
against raw one-call `LLM.generate`, overlapped against strict static batches, and the
running-sequence count over time."""

from __future__ import annotations

from typing import Any

from bench.report_sections import Section, _median, _n, _table, _verdict

GENERATION_GOAL, END_TO_END_GOAL, OVERLAP_GOAL = 0.97, 0.93, 1.3
TITLES = {
    "chat": "2,048 chat lines, max_tokens 4-128 (log-uniform, seed 7), demo Llama",
    "long_tail": "1,024 chat lines at max_tokens 1,024, lengths the long-tail Llama decides",
}


def _timeline_chart(timelines: dict[str, list[list[float]]]) -> str:
    from bench.report import _chart

    def draw(plt: Any) -> Any:
        figure, axes = plt.subplots(figsize=(8, 4))
        for mode, points in timelines.items():
            axes.plot([p[0] for p in points], [p[1] for p in points], label=mode)
        axes.set_title("Long-tail workload: requests the engine runs, over the job")
        axes.set_xlabel("seconds")
        axes.set_ylabel("running requests")
        axes.legend()
        return figure

    return _chart("ceiling", draw)


def ceiling_section(result: dict[str, Any] | None) -> Section:
    if not result:
        return [], []
    long_poll = result.get("client_polls") == "long"
    polled = (
        "polled over HTTP as the CLI's `--wait` polls it (once a second, each poll a long poll, `?wait=1`, "
        "answered as soon as the status changes)"
        if long_poll
        else "polled over HTTP once a second"
    )
    pairs = [
        r["service"]["tokens_per_second"] / r["raw"]["tokens_per_second"]
        for found in result["workloads"].values()
        for r in found["rounds"]
    ]
    lines = [
        "The engine never waits. `make run`'s shape: the API and one worker as processes on Postgres, the file "
        f"uploaded, the batch created with **no options** and {polled}. The ceiling is raw vLLM in its own "
        "process with the worker's engine settings: every line tokenized first, then one `LLM.generate` call "
        "with every line's token ids and `SamplingParams`. Ratios are medians of the interleaved rounds' ratios.",
        "",
    ]
    goals: list[list[str]] = []
    for name, found in result["workloads"].items():
        rounds = found["rounds"]
        sides = [side for side in ("raw", "service", "strict") if side in rounds[0]]
        labels = {"raw": "raw, one generate call", "service": "service, defaults", "strict": "service, strict"}
        rows = [
            [
                labels[side],
                _n(_median(rounds, side, "generated_tokens")),
                _n(_median(rounds, side, "tokens_per_second")),
                _n(_median(rounds, side, "end_to_end_tokens_per_second")),
            ]
            for side in sides
        ]
        lines += [
            f"### {TITLES.get(name, name)}",
            "",
            *_table(["", "generated tokens", "generation tokens/s", "end to end tokens/s"], rows),
            f"Service / raw: **{found['generation_ratio']:.3f}** in generation, **{found['end_to_end_ratio']:.3f}** "
            f"end to end ({len(rounds)} rounds). The batch size the defaults chose: {found['batch_size']} "
            f"({found['batch_size_basis']}).",
            "",
        ]
        goals += [
            [f"{name}: defaults / raw, generation", f"≥ {GENERATION_GOAL}", f"{found['generation_ratio']:.3f}",
             _verdict(found["generation_ratio"] >= GENERATION_GOAL)],
            [f"{name}: defaults / raw, end to end", f"≥ {END_TO_END_GOAL}", f"{found['end_to_end_ratio']:.3f}",
             _verdict(found["end_to_end_ratio"] >= END_TO_END_GOAL)],
        ]  # fmt: skip
        if "overlap_vs_strict_generation" in found:
            overlap = found["overlap_vs_strict_generation"]
            lines += [
                f"Overlapped / strict at the same batch size: **{overlap:.2f}x** in generation, "
                f"{found['overlap_vs_strict_end_to_end']:.2f}x end to end (strict / raw: "
                f"{found['strict_generation_ratio']:.3f}).",
                "",
            ]
            goals.append(
                ["long tail: overlapped / strict", f"≥ {OVERLAP_GOAL}x", f"{overlap:.2f}x",
                 _verdict(overlap >= OVERLAP_GOAL)]
            )  # fmt: skip
    lines += [
        f"Read the ratios with their spread: on this 2-core VM the rounds' generation ratios run from "
        f"{min(pairs):.2f} to {max(pairs):.2f} (`bench/results/ceiling.json`). The service tokenizes the next "
        "static batch on its preparer thread while the engine runs, sharing the GIL with vLLM's output "
        "processing, where raw tokenizes before its clock. End to end the service pays upload, claim and "
        "finalization, which raw does not"
        + (
            "; the long poll sees `completed` within milliseconds, where a client sleeping a second between "
            "plain polls sees it half a second late on average (10 % of a 5-second job, 1 % of a minute's)."
            if long_poll
            else "; and the client polls once a second, so it sees `completed` half a second late on average "
            "(10 % of a 5-second job, 1 % of a minute's)."
        ),
        "",
    ]
    if result.get("timelines"):
        lines += [
            "The long-tail workload once more per mode through the worker, with each request's scheduled and "
            "last-token times from vLLM's stats: strict static batches drain to a few running requests before "
            "the next enters; overlapped ones keep the engine full until the file runs out.",
            "",
            _timeline_chart(result["timelines"]),
            "",
        ]
    return lines, goals
