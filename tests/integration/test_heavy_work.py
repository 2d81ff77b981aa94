"""The API's heavy work (estimates, dry runs, retries) keeps off the engine's CPU: its
threads run at the lowest priority, and the model's files are loaded at start-up, not
by the first job's estimate while that job runs."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.api.heavy_work import HeavyWork
from app.api.main import create_app
from app.core.priority import LOWEST, thread_priority
from app.core.settings import Settings
from app.jobs.estimate import model_limits, model_tokenizer


def test_heavy_work_runs_at_the_lowest_cpu_priority_and_requests_keep_theirs() -> None:
    heavy = HeavyWork(2)
    try:
        priorities = {heavy.submit(thread_priority).result(timeout=10) for _ in range(4)}
    finally:
        heavy.shutdown()
    assert priorities == {LOWEST}
    assert thread_priority() < LOWEST  # the caller's thread is untouched


def test_the_api_loads_its_models_tokenizers_and_configs_at_start_up(settings: Settings) -> None:
    model_tokenizer.cache_clear()
    model_limits.cache_clear()
    app = create_app(settings)
    with TestClient(app):
        app.state.model_files.result(timeout=120)
        # Both served models (generation and embeddings) are loaded, and no request asked.
        assert model_tokenizer.cache_info().currsize == model_limits.cache_info().currsize == 2
        assert model_tokenizer.cache_info().hits == 0
