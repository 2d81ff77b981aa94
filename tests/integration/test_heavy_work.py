"""The API's heavy work (estimates, dry runs, retries) keeps off the engine's CPU: its
threads run at the lowest priority, and the model's files are loaded at start-up, not
by the first job's estimate while that job runs."""

from __future__ import annotations

import os
import threading

from fastapi.testclient import TestClient

from app.api.heavy_work import LOWEST_PRIORITY, HeavyWork
from app.api.main import create_app
from app.core.settings import Settings
from app.jobs.estimate import model_limits, model_tokenizer


def own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_heavy_work_runs_at_the_lowest_cpu_priority_and_requests_keep_theirs() -> None:
    heavy = HeavyWork(2)
    try:
        priorities = {heavy.submit(own_priority).result(timeout=10) for _ in range(4)}
    finally:
        heavy.shutdown()
    assert priorities == {LOWEST_PRIORITY}
    assert own_priority() < LOWEST_PRIORITY  # the caller's thread is untouched


def test_the_api_loads_its_models_tokenizers_and_configs_at_start_up(settings: Settings) -> None:
    model_tokenizer.cache_clear()
    model_limits.cache_clear()
    app = create_app(settings)
    with TestClient(app):
        app.state.model_files.result(timeout=120)
        # Both served models (generation and embeddings) are loaded, and no request asked.
        assert model_tokenizer.cache_info().currsize == model_limits.cache_info().currsize == 2
        assert model_tokenizer.cache_info().hits == 0
