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
# Run unprivileged (numeric USER: runtimes such as Kubernetes runAsNonRoot can check
# it is not root). The code and packages stay root-owned (read-only to the app); the app
# owns var/ and its home, where the Hugging Face cache (compose mounts a volume at HF_HOME;
# a fresh volume takes this ownership) and vLLM's compile caches live.
ENV HF_HOME=/home/app/.cache/huggingface
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app app \
    && mkdir -p "$HF_HOME" /srv/var && chown -R app:app /home/app /srv/var
USER 10001:10001
STOPSIGNAL SIGTERM
CMD ["python", "-m", "worker"]
