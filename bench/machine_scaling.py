"""The machine's own ceiling for the scale_out scenario: raw `LLM.generate` in one process
pinned to one core, then in two such processes at once (no service, no database). The ratio
of their times is the best the service's two workers could reach here. Prints the figures
and writes them into bench/results/scale_out.json (its part `machine_scaling`).

    python -m bench.machine_scaling [--prompts 2048] [--batch-size 256] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.common import write_part


def child(prompts: int, batch_size: int, max_tokens: int) -> None:
    from vllm import SamplingParams

    from app.core.settings import Settings
    from app.tools.demo_model import DEFAULT_OUTPUT
    from worker.engine import VllmEngine

    engine = VllmEngine(Settings(model=str(DEFAULT_OUTPUT)))
    texts = [f"benchmark document number {i}" for i in range(prompts)]
    params = SamplingParams(max_tokens=max_tokens)
    engine.llm.generate(texts[:batch_size], params, use_tqdm=False)  # warm-up
    print("READY", flush=True)
    sys.stdin.readline()  # start together
    began = time.perf_counter()
    for start in range(0, prompts, batch_size):
        engine.llm.generate(texts[start : start + batch_size], params, use_tqdm=False)
    print(f"SECONDS {time.perf_counter() - began}", flush=True)
    engine.shutdown()


def run(processes: int, args: argparse.Namespace) -> float:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.machine_scaling",
                "--child",
                "--prompts",
                str(args.prompts),
                "--batch-size",
                str(args.batch_size),
                "--max-tokens",
                str(args.max_tokens),
            ],
            env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(core)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=(lambda c=core: os.sched_setaffinity(0, {c})),
        )
        for core in range(processes)
    ]
    for proc in procs:
        while proc.stdout and proc.stdout.readline().strip() != "READY":
            pass
    for proc in procs:
        assert proc.stdin
        proc.stdin.write("go\n")
        proc.stdin.flush()
    seconds = []
    for proc in procs:
        assert proc.stdout
        for line in proc.stdout:
            if line.startswith("SECONDS"):
                seconds.append(float(line.split()[1]))
        proc.wait()
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.prompts, args.batch_size, args.max_tokens)
        return
    one = run(1, args)
    two = run(2, args)  # each process does the same work, so ideal is equal time: 2x the throughput
    result = {
        "one_process_seconds": round(one, 2),
        "two_processes_seconds": round(two, 2),
        "time_for_the_same_total_work_ratio": round(two / (2 * one), 3),
        "settings": vars(args),
    }
    write_part("scale_out", "machine_scaling", result)
    print(json.dumps(result, indent=2))
    print(
        f"two pinned engines do twice the work in {two / one:.2f}x the time: "
        f"a ratio of {result['time_for_the_same_total_work_ratio']:.2f} for the same total work (ideal 0.50)"
    )


if __name__ == "__main__":
    main()
