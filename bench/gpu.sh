#!/usr/bin/env bash
# The ceiling and overlap figures of issue 19 on one CUDA GPU, by one command:
#   bench/gpu.sh            (about 5-10 minutes after `make install` on one GPU)
# Installs vllm (the Makefile picks it where nvidia-smi answers), writes the demo models
# (the project's own: the Llama and its long-tail variant), then runs bench.ceiling: raw
# one-call LLM.generate against the service at its defaults in `make run`'s shape, and
# overlapped against strict static batches on the long-tail workload. Prints one JSON line
# per figure; the whole result goes to bench/results/ceiling.json (copy it off the box).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "bench/gpu.sh: no nvidia-smi here; run make bench on a CPU box" >&2; exit 2; }
make install model >&2
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" TENSOR_PARALLEL_SIZE=1
# Eager mode: CUDA graph capture would take most of the ten minutes on engine starts alone.
export ENFORCE_EAGER="${ENFORCE_EAGER:-true}"
exec .venv/bin/python -m bench.ceiling --runs "${RUNS:-2}" --json-lines
