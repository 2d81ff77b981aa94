# A GPU worker: CUDA base, vLLM pinned. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t llm-batch-worker .
#
# Which hosts run it: vLLM 0.32 pins torch 2.13.0, whose PyPI wheels are built for CUDA 13 and
# need an NVIDIA driver R580 or newer. For R575-R579 hosts build with
#   --build-arg TORCH_BACKEND=cu129   (PyTorch's CUDA 12.9 wheels, the route vLLM documents);
# older drivers cannot run vLLM 0.32 (`llm-batch doctor` on the host says so).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ARG VLLM_VERSION=0.32.0
ARG TORCH_BACKEND=default
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# A C compiler and Python's headers: Triton compiles vLLM's kernels (sampler, input buffers,
# structured-output masks) at their first launch, and torch.compile builds its own.
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
        python3-pip build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ "$TORCH_BACKEND" = default ]; then pip install "vllm==${VLLM_VERSION}"; \
    else pip install "vllm==${VLLM_VERSION}" --extra-index-url "https://download.pytorch.org/whl/${TORCH_BACKEND}"; fi
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .
# Run unprivileged (numeric USER: runtimes such as Kubernetes runAsNonRoot can check
# it is not root). The code and packages stay root-owned (read-only to the app); the app
# owns var/ and its home, where the Hugging Face cache (compose mounts a volume at HF_HOME;
# a fresh volume takes this ownership) and vLLM's compile caches live.
ENV HF_HOME=/home/app/.cache/huggingface
ENV VLLM_CACHE_ROOT=/home/app/.cache/vllm
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app app \
    && mkdir -p "$HF_HOME" "$VLLM_CACHE_ROOT" /srv/var && chown -R app:app /home/app /srv/var
USER 10001:10001
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker"]
