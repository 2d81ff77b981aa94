"""Length-aware packing: the same job, output lengths spread (`max_tokens` drawn
log-uniform from 4 to N), through the service's worker with and without
`pack_by_length`, runs interleaved on one engine. Prints the figures and writes
bench/results/length_packing.json.

    python -m bench.length_packing [--lines 1024] [--batch-size 32] [--max-tokens 128] [--runs 3]

Uses DATABASE_URL if set, else an embedded Postgres in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128, help="the long end of the spread")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the demo model")
    args = parser.parse_args()

    from app.core.migrations import upgrade
    from app.tools.demo_model import DEFAULT_OUTPUT, ensure_demo_model
    from bench.common import BenchConfig, output_lengths, postgres, prompt_text, write_result
    from bench.engines import load_engine
    from bench.service_overhead import ServiceBench

    model = args.model or str(ensure_demo_model(DEFAULT_OUTPUT))
    config = BenchConfig(model=model, runs=args.runs)
    lengths = output_lengths(args.lines, args.max_tokens, config.seed)
    rows = [{"custom_id": f"r{i}", "prompt": prompt_text(i), "max_tokens": n} for i, n in enumerate(lengths)]
    runs: dict[str, list[dict[str, float]]] = {"static": [], "packed": []}
    with postgres(None) as database_url, tempfile.TemporaryDirectory() as tmp:
        upgrade(database_url)
        engine = load_engine(config)
        service = ServiceBench(engine, config, database_url, Path(tmp) / "storage", args.batch_size)
        try:
            service.run(rows[: args.batch_size * 2])  # warm-up
            for _ in range(args.runs):
                runs["static"].append(service.run(rows))
                runs["packed"].append(service.run(rows, pack_by_length=True))
        finally:
            service.close()
            engine.shutdown()

    def median(mode: str, key: str) -> float:
        return round(statistics.median(run[key] for run in runs[mode]), 1)

    result: dict[str, Any] = {
        "lines": args.lines,
        "batch_size": args.batch_size,
        "max_tokens_spread": [min(lengths), max(lengths)],
        "static_tokens_per_second": median("static", "tokens_per_second"),
        "packed_tokens_per_second": median("packed", "tokens_per_second"),
        "static_end_to_end_tokens_per_second": median("static", "end_to_end_tokens_per_second"),
        "packed_end_to_end_tokens_per_second": median("packed", "end_to_end_tokens_per_second"),
        "runs": runs,
        "settings": vars(args) | {"model": model},
    }
    result["packed_over_static"] = round(result["packed_tokens_per_second"] / result["static_tokens_per_second"], 3)
    write_result("length_packing", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"packed / in input order: {result['packed_over_static']:.3f} of the generated tokens/s")


if __name__ == "__main__":
    main()
