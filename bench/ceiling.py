"""ceiling (issue 19): the engine never waits. The service at its defaults against the
best a vLLM user can do without it: one `LLM.generate` call with every line of the file.

    python -m bench.ceiling [--runs 3] [--workloads chat long_tail]

Two workloads, each in `make run`'s shape (the API and a worker as processes on Postgres,
the file uploaded, the batch created with no options and polled over HTTP as the CLI's
`--wait` polls: once a second, each poll a long poll answered as soon as the status changes):

- chat: 2,048 chat lines, `max_tokens` log-uniform from 4 to 128 (seed 7), on the demo Llama;
- long_tail: 1,024 chat lines that all ask for `max_tokens` 1,024, on the long-tail demo
  Llama (`make model`), which ends its greedy answers anywhere from a few tokens to never:
  lengths the model decides, unknown to the service before the run.

The raw side runs in its own process with the worker's engine settings: every line
tokenized (chat template applied) before the clock starts, then one `LLM.generate` call
with every line's token ids and `SamplingParams`. On the long-tail workload the service also
runs in strict mode (one blocking generate per static batch) at the size its defaults
chose, and one more pass of each mode, in one process, records when each request ran so
the engine's running-sequence count over time can be drawn. Rounds are interleaved and
figures are medians of the rounds' ratios.

Goals: generation tokens/s >= 0.97 of raw and end to end >= 0.93 on both workloads;
overlapped >= 1.3x strict on the long tail.

`--one-start` (bench/gpu.sh) runs both workloads on the long-tail Llama (the chat workload's
lengths then are the model's, capped by its spread of `max_tokens`), so each side starts its
engine once a round: the raw process runs every workload on one engine, and one API and
worker run the service's jobs (each workload at the defaults, the long tail in strict mode too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, fresh_database, output_lengths, postgres, prompt_text, write_result
from bench.deployed_shape import figures, run_job, run_jobs

CHAT_URL = "/v1/chat/completions"
DEMO = Path("var/models/demo-llama")
LONG_TAIL = Path("var/models/demo-llama-long-tail")
CHAT_LINES, CHAT_LONGEST, CHAT_SEED = 2048, 128, 7
LONG_TAIL_LINES, LONG_TAIL_MAX_TOKENS = 1024, 1024
WARM_UP_LINES = 64
TIMELINE_POINTS = 200  # samples of the running-sequence count


def chat_row(index: int, model: str, max_tokens: int, **sampling: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt_text(index)}], "max_tokens": max_tokens}
    return {"custom_id": f"r{index}", "method": "POST", "url": CHAT_URL, "body": body | sampling}


def workload(name: str, one_model: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    """The model folder and the lines of a workload (`one_model`: on the long-tail Llama);
    CEILING_SCALE (a fraction, for a quick try of the harness) shortens both workloads."""
    scale = float(os.environ.get("CEILING_SCALE", "1"))
    if name == "chat":
        lines = max(WARM_UP_LINES, int(CHAT_LINES * scale))
        lengths = output_lengths(lines, CHAT_LONGEST, CHAT_SEED)
        model = LONG_TAIL if one_model else DEMO
        return model, [chat_row(i, model.name, lengths[i]) for i in range(lines)]
    lines, longest = max(WARM_UP_LINES, int(LONG_TAIL_LINES * scale)), max(16, int(LONG_TAIL_MAX_TOKENS * scale))
    return LONG_TAIL, [chat_row(i, LONG_TAIL.name, longest, temperature=0) for i in range(lines)]


def raw_side(names: list[str], one_model: bool = False) -> dict[str, dict[str, Any]]:
    """Runs in a child process: the worker's engine, one `LLM.generate` with every line of
    each workload in `names` (one engine for all of them: they share a model)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from app.core.settings import Settings
    from app.jobs.lines import parse_line
    from app.jobs.planning import prompt_token_ids
    from worker.engine import VllmEngine

    models = {workload(name, one_model)[0] for name in names}
    assert len(models) == 1, f"one engine runs one model, not {models}"
    engine = VllmEngine(Settings(model=str(models.pop().resolve())))
    try:

        def call(part: list[dict[str, Any]]) -> tuple[int, float, float]:
            began = time.perf_counter()
            requests = [parse_line(json.dumps(row).encode(), i, CHAT_URL) for i, row in enumerate(part)]
            ids = [TokensPrompt(prompt_token_ids=prompt_token_ids(r, engine.tokenizer)) for r in requests]
            params = [
                SamplingParams(max_tokens=row["body"]["max_tokens"], temperature=row["body"].get("temperature", 1.0))
                for row in part
            ]
            generating = time.perf_counter()
            outputs = engine.llm.generate(ids, params, use_tqdm=False)
            ended = time.perf_counter()
            return sum(len(o.outputs[0].token_ids) for o in outputs), ended - generating, ended - began

        found = {}
        for name in names:
            rows = workload(name, one_model)[1]
            call(rows[:WARM_UP_LINES])
            generated, seconds, wall = call(rows)
            found[name] = {
                "generated_tokens": generated,
                "generate_seconds": seconds,
                "tokens_per_second": generated / seconds,
                "end_to_end_tokens_per_second": generated / wall,
            }
        return found
    finally:
        engine.shutdown()


def service_side(server: str, name: str, run_number: int, options: dict[str, Any]) -> dict[str, Any]:
    model, rows = workload(name)
    with fresh_database(server, f"bench_ceiling_{name}_{run_number}") as url:
        done = run_job(url, str(model.resolve()), rows, rows[:WARM_UP_LINES], CHAT_URL, options, long_poll=True)
    return figures(done) | {"batch_size": done["batch_size"], "batch_size_basis": done["batch_size_basis"]}


def timelines(server: str, batch_size: int) -> dict[str, list[list[float]]]:
    """The long-tail workload once per mode through the worker in this process, with each
    request's scheduled and last-token times: the running-sequence count over time."""
    from bench.common import BenchConfig
    from bench.service_overhead import ServiceBench
    from worker.engine import VllmEngine

    class Timed(VllmEngine):
        spans: list[tuple[float, float]] = []

        def step(self) -> list[Any]:
            finished = super().step()
            self.spans += [(g.timing.scheduled, g.timing.last_token) for _, g in finished if g.timing]
            return finished

        def generate(self, prompts: list[list[int]], sampling: list[dict[str, Any]]) -> list[Any]:
            generations = super().generate(prompts, sampling)
            self.spans += [(g.timing.scheduled, g.timing.last_token) for g in generations if g.timing]
            return generations

    model, rows = workload("long_tail")
    config = BenchConfig(model=str(model.resolve()))
    from app.core.settings import Settings

    engine = Timed(Settings(model=config.model))
    found = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp,
            fresh_database(server, "bench_ceiling_t") as url,
        ):
            bench = ServiceBench(engine, config, url, Path(tmp), batch_size)
            try:
                bench.run(rows[:WARM_UP_LINES], CHAT_URL, pack_by_length=True)
                for mode in ("overlapped", "strict"):
                    engine.spans = []
                    bench.run(rows, CHAT_URL, pack_by_length=True, batching=mode)
                    found[mode] = running_over_time(engine.spans)
            finally:
                bench.close()
    finally:
        engine.shutdown()
    return found


def running_over_time(spans: list[tuple[float, float]]) -> list[list[float]]:
    """[seconds from the first request, requests running] at TIMELINE_POINTS instants."""
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    points = []
    for k in range(TIMELINE_POINTS + 1):
        t = start + (end - start) * k / TIMELINE_POINTS
        points.append([round(t - start, 3), sum(1 for s, e in spans if s <= t < e)])
    return points


def raw_sides(names: list[str], one_model: bool) -> dict[str, dict[str, Any]]:
    """The raw side of `names`, in a process of its own (one engine start)."""
    command = [sys.executable, "-m", "bench.ceiling", "--raw", *names, *(["--one-start"] if one_model else [])]
    # Its stderr (vLLM's log, a traceback) goes through: a failure shows why.
    raw = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    found: dict[str, dict[str, Any]] = json.loads(raw.stdout.strip().splitlines()[-1])
    return found


def service_sides(server: str, names: list[str], run_number: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Every workload through one API and worker (one engine start): {workload: {side: figures}}."""
    jobs, labels = [], []
    for name in names:
        rows = workload(name, one_model=True)[1]
        jobs.append((rows, {}))
        labels.append((name, "service"))
        if name == "long_tail":
            jobs.append((rows, {"batching": "strict"}))  # the size its defaults choose on this engine
            labels.append((name, "strict"))
    model = str(LONG_TAIL.resolve())
    warm_up = workload(names[0], one_model=True)[1][:WARM_UP_LINES]
    with fresh_database(server, f"bench_ceiling_one_{run_number}") as url:
        done = run_jobs(url, model, jobs, warm_up, CHAT_URL, long_poll=True)
    found: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    for (name, side), batch in zip(labels, done, strict=True):
        found[name][side] = (
            figures(batch) | {"batch_size": batch["batch_size"]} | {"batch_size_basis": batch["batch_size_basis"]}
        )
    return found


def measure(
    server: str, runs_wanted: int, names: list[str], timeline: bool = True, one_start: bool = False
) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for run_number in range(runs_wanted):
        if one_start:
            raw = raw_sides(names, one_model=True)
            service = service_sides(server, names, run_number)
        for name in names:
            if one_start:
                sides = {"raw": raw[name], **service[name]}
            else:
                sides = {"raw": raw_sides([name], one_model=False)[name]}
                sides["service"] = service_side(server, name, run_number, {})
                if name == "long_tail":
                    strict = {"batching": "strict", "batch_size": sides["service"]["batch_size"]}
                    sides["strict"] = service_side(server, name, run_number, strict)
            rounds[name].append(sides)
            print(f"{name} round {run_number}: " + ", ".join(
                f"{side} {figures['tokens_per_second']:.0f} tok/s ({figures['end_to_end_tokens_per_second']:.0f} e2e)"
                for side, figures in sides.items()), flush=True)  # fmt: skip
    result: dict[str, Any] = {"workloads": {}, "client_polls": "long"}
    for name, per_round in rounds.items():

        def ratio(side: str, key: str, base: str = "raw", rows: list[dict[str, Any]] = per_round) -> float:
            return round(statistics.median(r[side][key] / r[base][key] for r in rows), 3)

        figures_of = {
            "rounds": per_round,
            "generation_ratio": ratio("service", "tokens_per_second"),
            "end_to_end_ratio": ratio("service", "end_to_end_tokens_per_second"),
            "batch_size": per_round[0]["service"]["batch_size"],
            "batch_size_basis": per_round[0]["service"]["batch_size_basis"],
        }
        if name == "long_tail":
            figures_of["overlap_vs_strict_generation"] = ratio("service", "tokens_per_second", "strict")
            figures_of["overlap_vs_strict_end_to_end"] = ratio("service", "end_to_end_tokens_per_second", "strict")
            figures_of["strict_generation_ratio"] = ratio("strict", "tokens_per_second")
        result["workloads"][name] = figures_of
    if "long_tail" in names and timeline:
        result["timelines"] = timelines(server, result["workloads"]["long_tail"]["batch_size"])
    return result


def run(config: Any) -> dict[str, Any]:
    return measure(config.database_url, config.runs, ["chat", "long_tail"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", nargs="+", choices=["chat", "long_tail"], help="(internal) run raw sides, print them")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", choices=["chat", "long_tail"], default=["chat", "long_tail"])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json-lines", action="store_true", help="print one JSON line per figure (bench/gpu.sh)")
    parser.add_argument("--no-timelines", action="store_true", help="skip the running-sequence timelines (one start)")
    parser.add_argument(
        "--one-start", action="store_true", help="both workloads on the long-tail Llama: one engine start per side"
    )
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw_side(args.raw, args.one_start)))
        return
    with postgres(args.database_url) as server:
        result = measure(server, args.runs, args.workloads, not args.no_timelines, args.one_start)
    write_result("ceiling", result)
    if args.json_lines:
        for name, found in result["workloads"].items():
            for figure in ("generation_ratio", "end_to_end_ratio", "overlap_vs_strict_generation", "batch_size"):
                if figure in found:
                    print(json.dumps({"workload": name, "figure": figure, "value": found[figure]}))
            for side in found["rounds"][0]:
                tokens_per_second = statistics.median(r[side]["tokens_per_second"] for r in found["rounds"])
                print(json.dumps({"workload": name, "figure": f"{side}_tokens_per_second", "value": tokens_per_second}))
        return
    for name, found in result["workloads"].items():
        print(f"{name}: service / raw {found['generation_ratio']:.3f} generation (goal 0.97), "
              f"{found['end_to_end_ratio']:.3f} end to end (goal 0.93)")  # fmt: skip
    print(f"written to {RESULTS / 'ceiling.json'}")


if __name__ == "__main__":
    main()
