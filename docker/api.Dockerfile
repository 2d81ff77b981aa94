# The API: slim, no vLLM, no GPU. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t llm-batch-api .
FROM python:3.11-slim
WORKDIR /srv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000 MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=1048576
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir .
# Run unprivileged (numeric USER: runtimes such as Kubernetes runAsNonRoot can check
# it is not root). The code and packages stay root-owned (read-only to the app); var/
# (VAR_DIR, unused when DATABASE_URL and STORAGE_URL are set) and its home (the Hugging Face
# cache, where the API reads MODEL's tokenizer) are the app's.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app app \
    && mkdir -p /srv/var /home/app/.cache/huggingface && chown -R app:app /srv/var /home/app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# Migrations first (idempotent), then the API.
CMD ["sh", "-c", "python -m app.core.migrations && exec uvicorn --factory app.api.main:create_app --host 0.0.0.0 --port 8000"]
