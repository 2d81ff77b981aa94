"""`python -m bench` (`make bench`): every benchmark scenario, then docs/benchmarks.md.

Runs on the demo model with the CPU engine by default; `--model` and
`--tensor-parallel-size` run the same scenarios on any model (a 2-GPU box with
Llama-3-70B-Instruct, say). Each scenario has one name (bench/scenarios.py, listed below):
`--only` and `--skip` take it, bench/NAME.py runs it, it writes bench/results/NAME.json, and
the report's section (docs/benchmarks.md, charts in docs/benchmarks/*.png, written from
those files) is headed with it. Figures are medians of `--runs` runs, and each comparison
is a ratio of figures from the same run. Only one vLLM engine runs at a time: the
in-process engine first (static_vs_continuous's static batches, service_overhead and
peer's service side), then vLLM's server (static_vs_continuous's continuous side) and
vLLM's run-batch (peer's other side), then the other scenarios in the order below, each
starting its own.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import report
from bench.common import BenchConfig, fresh_database, postgres, write_result
from bench.scenarios import NAMES, SCENARIOS

ENGINE_SCENARIOS = {scenario.name for scenario in SCENARIOS if scenario.uses_engine}
DEFAULT_PEER_BATCH_SIZE = None  # the service's defaults: fitted to the engine

QUICK = {"runs": 3, "prompts": 512, "max_tokens": 128, "lines": 2048, "ingest_mb": 1024, "scale_out_lines": 4000}
FULL = {"runs": 5, "prompts": 2048, "max_tokens": 512, "lines": 8192, "ingest_mb": 1024, "scale_out_lines": 8000}


def parse_args() -> argparse.Namespace:
    width = max(len(name) for name in NAMES)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="scenarios (NAME), in the report's order, which is the run order too once the\n"
        "in-process engine's phase is over (* marks the scenarios that run on that engine):\n"
        + "\n".join(f"  {'*' if s.uses_engine else ' '} {s.name:<{width}}  {s.title}" for s in SCENARIOS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model and engine")
    model.add_argument("--model", help="model folder or Hugging Face id (default: the demo model, built if missing)")
    model.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs (or CPU ranks) per engine")
    model.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    sizes = parser.add_argument_group("sizes (default: a 45 to 100 minute run on a 2-core CPU)")
    sizes.add_argument("--full", action="store_true", help=f"full sizes: {FULL}")
    sizes.add_argument("--runs", type=int, help="runs per figure; figures are medians (default 3, full 5)")
    sizes.add_argument("--prompts", type=int, help="static_vs_continuous: prompts per run (default 512, full 2048)")
    sizes.add_argument("--max-tokens", type=int, help="longest output of the seeded 4..N spread (default 128)")
    sizes.add_argument("--lines", type=int, help="service_overhead and peer: lines per job (default 2048, full 8192)")
    sizes.add_argument("--ingest-mb", type=int, help="ingest: upload size in MB (default 1024)")
    sizes.add_argument("--poll-clients", type=int, default=100, help="polling: concurrent clients")
    sizes.add_argument("--poll-seconds", type=float, default=30.0, help="polling: seconds of polling")
    sizes.add_argument("--poll-interval", type=float, default=1.0, help="polling: seconds between a client's polls")
    sizes.add_argument("--queue-jobs", type=int, default=10_000, help="queue_claims: queued jobs")
    sizes.add_argument("--queue-workers", type=int, default=4, help="queue_claims: claiming processes")
    sizes.add_argument("--scale-out-lines", type=int, help="scale_out: lines of the job (default 4000, full 8000)")
    sizes.add_argument("--peer-batch-size", type=int, help="peer: the service's batch size (default: fitted)")
    sizes.add_argument("--seed", type=int, default=1234, help="seed of the output-length spread")
    which = parser.add_argument_group("which scenarios")
    which.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help="run these scenarios (names below)")
    which.add_argument("--skip", nargs="+", choices=NAMES, default=[], metavar="NAME", help="run all but these")
    which.add_argument("--report-only", action="store_true", help="rewrite the report from the result files alone")
    which.add_argument(
        "--report",
        action="store_true",
        help="after a partial run (--only, --skip), rewrite the report too (a full run always does)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="a Postgres server; each scenario makes its own database there (default: DATABASE_URL, "
        "else an embedded Postgres in a temporary folder)",
    )
    return parser.parse_args()


def build_config(args: argparse.Namespace, model: str, server_url: str) -> BenchConfig:
    sizes = FULL if args.full else QUICK

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return sizes[name] if value is None else value

    return BenchConfig(
        model=model,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        runs=pick("runs"),
        prompts=pick("prompts"),
        max_tokens=pick("max_tokens"),
        lines=pick("lines"),
        seed=args.seed,
        ingest_bytes=pick("ingest_mb") << 20,
        poll_clients=args.poll_clients,
        poll_seconds=args.poll_seconds,
        poll_interval=args.poll_interval,
        queue_jobs=args.queue_jobs,
        queue_workers=args.queue_workers,
        scale_out_lines=pick("scale_out_lines"),
        database_url=server_url,
    )


def engine_phase(config: BenchConfig, selected: set[str], peer_batch_size: int | None) -> dict[str, Any]:
    """The scenarios' parts that run on the in-process engine, loaded once; what their
    other parts need afterwards. service_overhead runs whole here and writes its result."""
    from bench import peer, service_overhead, static_vs_continuous
    from bench.engines import load_engine, max_num_seqs

    found: dict[str, Any] = {}
    engine = load_engine(config)
    try:
        found["max_num_seqs"] = max_num_seqs(engine)
        found["model_name"] = engine.model_name
        if "static_vs_continuous" in selected:
            print("static_vs_continuous: static batches", flush=True)
            found["static"] = static_vs_continuous.run_static(engine, config) | {"max_num_seqs": found["max_num_seqs"]}
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            if "service_overhead" in selected:
                print("service_overhead", flush=True)
                with fresh_database(config.database_url, "bench_overhead") as url:
                    result = service_overhead.measure(engine, config, url, Path(tmp) / "overhead", config.lines)
                write_result("service_overhead", result)
            if "peer" in selected:
                # A user who sets nothing: the batch size fitted to the engine, overlapped batching.
                size = peer_batch_size or DEFAULT_PEER_BATCH_SIZE
                print(f"peer: the service's side, batch size {size or 'fitted'}", flush=True)
                lines = peer.chat_lines(config.lines, config.max_tokens, config.seed, engine.model_name)
                with fresh_database(config.database_url, "bench_peer") as url:
                    bench = service_overhead.ServiceBench(engine, config, url, Path(tmp) / "peer", size)
                    try:
                        found["peer_service"] = peer.run_service(bench, lines, config.runs) | {"batch_size": size}
                    finally:
                        bench.close()
                found["peer_lines"] = lines
    finally:
        engine.shutdown()
    return found


def run_peer(config: BenchConfig, found: dict[str, Any]) -> None:
    """peer's other side, vLLM's run-batch, beside the service's side from the engine phase."""
    from bench import peer

    print("peer: vLLM run-batch", flush=True)
    theirs = peer.run_vllm_batch(config, found["peer_lines"], found["model_name"], found["max_num_seqs"])
    ours = found["peer_service"]
    write_result(
        "peer",
        {
            "lines": config.lines,
            "max_num_seqs": found["max_num_seqs"],
            "service": ours,
            "run_batch": theirs,
            "ratio_end_to_end": round(
                ours["median"]["end_to_end_tokens_per_second"] / theirs["median"]["tokens_per_second"], 3
            ),
            "ratio_generation": round(ours["median"]["tokens_per_second"] / theirs["median"]["tokens_per_second"], 3),
        },
    )


def run_static_vs_continuous(config: BenchConfig, found: dict[str, Any]) -> None:
    """static_vs_continuous's continuous side, vLLM's server, beside the static batches from the engine phase."""
    from bench import static_vs_continuous

    continuous = static_vs_continuous.run_continuous(config, found.get("max_num_seqs"))
    write_result("static_vs_continuous", {"static": found["static"], "continuous": continuous})


def run_module(name: str, config: BenchConfig) -> None:
    """A scenario whose module bench/<name>.py has a `run(config)` that returns its figures."""
    module = importlib.import_module(f"bench.{name}")
    write_result(name, module.run(config))


def run_scenarios(config: BenchConfig, selected: set[str], args: argparse.Namespace) -> dict[str, float]:
    """Runs the selected scenarios in an order that keeps one engine at a time; their seconds."""
    seconds: dict[str, float] = {}
    found: dict[str, Any] = {}
    if selected & ENGINE_SCENARIOS:
        began = time.perf_counter()
        found = engine_phase(config, selected, args.peer_batch_size)
        seconds["engine_phase"] = round(time.perf_counter() - began, 1)
    after_the_engine: dict[str, Callable[[], None]] = {  # the engine scenarios' parts that need no engine of ours
        "static_vs_continuous": lambda: run_static_vs_continuous(config, found),
        "peer": lambda: run_peer(config, found),
    }
    for scenario in SCENARIOS:
        name = scenario.name
        if name not in selected or (scenario.uses_engine and name not in after_the_engine):
            continue
        step = after_the_engine.get(name, partial(run_module, name, config))
        print(f"scenario {name}", flush=True)
        began = time.perf_counter()
        try:
            step()
        except Exception:  # one broken scenario must not lose the others' figures
            traceback.print_exc()
            print(f"scenario {name} failed; its previous results are kept", flush=True)
            continue
        seconds[name] = round(time.perf_counter() - began, 1)
    return seconds


def main() -> None:
    args = parse_args()
    if args.report_only:
        report.write()
        return
    from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model
    from bench.machine import describe

    model = args.model or str(ensure_demo_model(DEFAULT_OUTPUT))
    selected = set(args.only or NAMES) - set(args.skip)
    started = time.perf_counter()
    with postgres(args.database_url) as server_url:
        config = build_config(args, model, server_url)
        seconds = run_scenarios(config, selected, args)
        machine = describe(server_url)
    settings = config.as_dict() | {"database_url": "(per scenario)", "scenarios": sorted(selected)}
    total = round(time.perf_counter() - started, 1)
    if selected != set(NAMES) and not args.report:  # the committed report stays whole
        print(f"done in {total / 60:.1f} min; bench/results/NAME.json written, the report left as it is "
              "(--report, or --report-only later, rewrites it)")  # fmt: skip
        return
    write_result("harness", {"machine": machine, "settings": settings, "seconds": seconds, "total_seconds": total})
    report.write()
    print(f"done in {total / 60:.1f} min; see docs/benchmarks.md")


if __name__ == "__main__":
    main()
