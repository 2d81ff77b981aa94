#!/usr/bin/env bash
# The ceiling and overlap figures of issue 19 on CUDA GPUs, by one command:
#   bench/gpu.sh                         (one H100: under 8 minutes after `make install`)
#   TENSOR_PARALLEL_SIZE=2 bench/gpu.sh  (the same through a 2-GPU engine)
#   CEILING_SCALE=0.1 bench/gpu.sh       (a quick try of the harness: a tenth of the lines)
# Installs vllm (the Makefile picks the wheels for the driver), writes the demo models (the
# project's own: the Llama and its long-tail variant), then runs bench.ceiling --one-start:
# both workloads (chat lines with a spread of max_tokens, and the long tail whose lengths the
# model decides) on the long-tail Llama, so each side starts its engine once: the raw side
# (one LLM.generate call per workload with every line) in one process, the service (each
# workload at its defaults, the long tail in strict mode too) through one API and worker in
# `make run`'s shape. Two engine starts in all, each with:
#   - a 2 GiB KV cache (KV_CACHE_MEMORY_BYTES): the demo model at 0.9 of an 80 GB GPU would
#     get millions of KV blocks, one Python object each, and minutes of start-up;
#   - CUDA graphs and torch.compile as a real deployment runs (ENFORCE_EAGER=true for eager),
#     their caches under VLLM_CACHE_ROOT;
#   - vLLM's log and any traceback on this terminal (stderr), the figures on stdout.
# Prints one JSON line per figure; the whole result goes to bench/results/ceiling.json.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "bench/gpu.sh: no nvidia-smi here; run make bench on a CPU box" >&2; exit 2; }
make install model >&2
.venv/bin/llm-batch doctor >&2 || { echo "bench/gpu.sh: the preflight failed (above)" >&2; exit 2; }
export TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-1}"
export KV_CACHE_MEMORY_BYTES="${KV_CACHE_MEMORY_BYTES:-2147483648}"
export VLLM_CACHE_ROOT="${VLLM_CACHE_ROOT:-$PWD/var/vllm-cache}"
export EMBEDDING_WORKER=false
exec .venv/bin/python -m bench.ceiling --runs "${RUNS:-1}" --one-start --no-timelines --json-lines
