# The API: slim, no vLLM, no GPU. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t llm-batch-api .
FROM python:3.11-slim
WORKDIR /srv
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir .
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# Migrations first (idempotent), then the API.
CMD ["sh", "-c", "python -m app.core.migrations && exec uvicorn --factory app.api.main:create_app --host 0.0.0.0 --port 8000"]
