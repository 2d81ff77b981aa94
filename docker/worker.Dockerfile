# A GPU worker: CUDA base, vLLM pinned. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t llm-batch-worker .
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ARG VLLM_VERSION=0.32.0
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "vllm==${VLLM_VERSION}"
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker"]
