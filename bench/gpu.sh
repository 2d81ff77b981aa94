#!/usr/bin/env bash
# The ceiling and overlap figures of issue 19 on CUDA GPUs, by one command:
#   bench/gpu.sh                         (one H100: under 8 minutes after `make install`)
#   TENSOR_PARALLEL_SIZE=2 bench/gpu.sh  (the same through a 2-GPU engine)
# Installs vllm (the Makefile picks the wheels for the driver), writes the demo models (the
# project's own: the Llama and its long-tail variant), then runs bench.ceiling once: raw
# one-call LLM.generate against the service at its defaults in `make run`'s shape, and
# overlapped against strict static batches on the long-tail workload. Five engine starts in
# all (raw and service on each workload, strict on the long tail), each with:
#   - a 2 GiB KV cache (KV_CACHE_MEMORY_BYTES): the demo model at 0.9 of an 80 GB GPU would
#     get millions of KV blocks, one Python object each, and minutes of start-up;
#   - CUDA graphs and torch.compile as a real deployment runs (ENFORCE_EAGER=true for eager),
#     their caches under VLLM_CACHE_ROOT, so starts after the first are faster;
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
exec .venv/bin/python -m bench.ceiling --runs "${RUNS:-1}" --no-timelines --json-lines
