"""The report's sections for deployed_shape, shared_prefix and input_read, and the table
helpers every section uses (bench/report.py writes the page and the other sections). A
section is its body and its goals; the page heads it with its scenario's name and title
(bench/scenarios.py) and names its goals the same."""

from __future__ import annotations

from typing import Any

Section = tuple[list[str], list[list[str]]]


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _median(runs: list[dict[str, Any]], side: str, key: str) -> float:
    values = sorted(float(run[side][key]) for run in runs)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def deployed_shape_section(result: dict[str, Any] | None) -> Section:
    if not result:
        return [], []
    runs, settings = result["runs"], result["settings"]
    generation, end_to_end = result["generation_ratio"], result["end_to_end_ratio"]
    rows = [
        [
            side,
            _n(_median(runs, key, "tokens_per_second")),
            _n(_median(runs, key, "end_to_end_tokens_per_second")),
        ]
        for side, key in (
            ("raw `LLM.generate` (token ids)", "raw"),
            ("raw, its threads kept off the compute cores as the worker's are", "raw_off_compute"),
            ("the service (`make run`'s shape)", "service"),
        )
        if key in runs[0]
    ]
    placed = result.get("generation_ratio_to_raw_off_compute")
    lines = [
        f"A {settings['lines']:,}-line completions job ({settings['max_tokens']} tokens each, batch size "
        f"{settings['batch_size']}) through the API and a worker as separate processes on Postgres, uploaded, "
        "created and polled once a second over HTTP like a client, against raw `LLM.generate` on the same "
        "prompts in static batches of the same size with the worker's engine settings, in its own process, "
        f"handed token ids as the worker hands them. {len(runs)} runs of each, interleaved; medians. The "
        "service's generate tokens/s are its own `generate_seconds`; its end to end is the client's clock from "
        "upload to seeing `completed`, against raw's wall time.",
        "",
        *_table(["", "generate tokens/s", "end-to-end tokens/s"], rows),
        f"Service / raw: **{generation:.3f}** in `generate`, **{end_to_end:.3f}** end to end"
        + (f"; against raw with the same CPU placement, {placed:.3f} in `generate`." if placed else "."),
        "",
        "Each ratio is the median of the runs' ratios, each service run against the raw run just before it, "
        "not a ratio of the medians above (`generate` pairs: "
        + ", ".join(f"{pair:.3f}" for pair in result["generation_pairs"])
        + "); the pairs' spread is this shared machine's noise.",
        "",
    ]
    goals = [
        ["generation / raw", "≥ 0.97", f"{generation:.3f}", _verdict(generation >= 0.97)],
        ["end to end / raw", "≥ 0.93", f"{end_to_end:.3f}", _verdict(end_to_end >= 0.93)],
    ]
    return lines, goals


def shared_prefix_section(result: dict[str, Any] | None) -> Section:
    if not result:
        return [], []
    ours, plain, theirs = result["defaults"]["median"], result["input_order"]["median"], result["run_batch"]["median"]
    bare = result.get("input_order_no_prefix_cache", {}).get("median")
    to_plain, to_peer = result["ratio_to_input_order"], result["ratio_to_run_batch"]

    def row(label: str, side: dict[str, Any]) -> list[str]:
        return [
            label,
            _n(side["tokens_per_second"]),
            _n(side["end_to_end_tokens_per_second"]),
            _n(side.get("cached_prompt_tokens", 0)),
        ]

    rows = [
        row("service at its defaults (packed windows, worker.packing's order)", ours),
        row("service in input order (`pack_by_length: false`), prefix cache on", plain),
    ]
    if bare:
        rows.append(row("service in input order, `PREFIX_CACHING=false`", bare))
    rows.append(["vLLM run-batch (its defaults: prefix cache on)", "", _n(theirs["tokens_per_second"]), ""])
    ratios = f"Defaults / input order: **{to_plain:.2f}x** in `generate`"
    if "ratio_to_input_order_end_to_end" in result:
        ratios += f", {result['ratio_to_input_order_end_to_end']:.2f}x end to end"
    if bare:
        ratios += (
            f"; defaults / input order without the prefix cache: {result['ratio_to_no_prefix_cache']:.2f}x "
            f"in `generate`, {result['ratio_to_no_prefix_cache_end_to_end']:.2f}x end to end"
        )
    ratios += f"; defaults / run-batch: **{to_peer:.2f}x** (end to end)."
    lines = [
        f"{result['lines']:,} chat lines, each with one of {result['system_prompts']} system prompts of about "
        f"{result['prefix_tokens']:,} tokens drawn at random (so neighbours rarely share one), `max_tokens` "
        f"{result['max_tokens']}, batch size {result['batch_size']}; the service's worker path (one engine with "
        "the prefix cache, one without, both loaded, runs interleaved), and vLLM's run-batch on the same file "
        "at its defaults.",
        "",
        *_table(["", "generate tokens/s", "end-to-end tokens/s", "cached prompt tokens"], rows),
        ratios,
        "",
        "The goal's baseline is input order with the prefix cache on: vLLM 0.32 turns prefix caching on by "
        "default for generation models, so that row is the service as it was before issue 14 (the engine at "
        "vLLM's defaults, lines as they come); the goal is read end to end, queued to completed. The row "
        "without the prefix cache says what the cache itself is worth. With this KV cache (512 MiB, about "
        "524k tokens) all 16 prefixes stay cached whatever the order (the same cached tokens every way), so "
        "the defaults sort by requested length (worker.packing groups by prefix only when the window's "
        "prefixes would not fit). On this CPU a decode step costs in proportion to the tokens its sequences "
        "attend to (about 1,100 each here), so the order wins little in `generate`; what the defaults win "
        "end to end is that a packed window is tokenized one static batch at a time, the first `generate` "
        "starting after one batch's tokens instead of the whole window's (2.2M tokens, about 3 s here). "
        "Against run-batch the remaining gap is vLLM's per-request cost of 1,100-token prompts, which both "
        "pay; the runs are noisy on this shared 2-core machine (see each side's runs in the JSON).",
        "",
    ]
    goals = [
        ["defaults / input order", "≥ 1.5x", *_against_input_order(result)],
        ["defaults / run-batch", "≥ 1.5x", f"{to_peer:.2f}x", _verdict(to_peer >= 1.5)],
    ]
    return lines, goals


def _against_input_order(result: dict[str, Any]) -> list[str]:
    """The goal read end to end (queued to completed, as run-batch's is), `generate` alone beside it."""
    in_generate = result["ratio_to_input_order"]
    end_to_end = result.get("ratio_to_input_order_end_to_end")
    if end_to_end is None:
        return [f"{in_generate:.2f}x", _verdict(in_generate >= 1.5)]
    figures = f"{end_to_end:.2f}x end to end ({in_generate:.2f}x in `generate`)"
    if end_to_end >= 1.5 > in_generate:
        return [figures, "**end to end only**"]  # a goal met one way only is not called met
    return [figures, _verdict(min(end_to_end, in_generate) >= 1.5)]


def input_read_section(result: dict[str, Any] | None) -> Section:
    if not result:
        return [], []
    ratio = result["read_ratio"]
    lines = [
        f"A {result['lines']:,}-line input ({result['file_bytes'] / 1e6:,.0f} MB) in {result['shards']} shards, "
        "each shard's lines read as its runner reads them (a ranged read from the recorded line offset "
        "nearest before it), counting bytes read from storage.",
        "",
        *_table(
            ["", "bytes read", "times the file"],
            [
                ["ranged reads (now)", _n(result["bytes_read"]), f"{ratio:.3f}"],
                [
                    "every shard from line 0 (before)",
                    _n(result["from_line_zero_bytes"]),
                    f"{result['from_line_zero_ratio']:.2f}",
                ],
            ],
        ),
    ]
    return lines, [["input bytes read / file", "≤ 1.1x", f"{ratio:.3f}x", _verdict(ratio <= 1.1)]]
