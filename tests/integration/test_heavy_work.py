"""The API's heavy work keeps off the engine's CPU and off the requests' GIL: tokenizing
(estimates, dry runs, loading the models' files) runs in a process of its own at the
lowest priority, retries on low-priority threads, and the model's files are loaded at
start-up, not by the first job's estimate while that job runs."""

from __future__ import annotations

import os

from fastapi.testclient import TestClient

from app.api.heavy_work import HeavyWork, process_priority, submit_to_process
from app.api.main import create_app
from app.core.priority import LOWEST, thread_priority
from app.core.settings import Settings
from app.jobs.estimate import model_limits, model_tokenizer


def test_heavy_work_threads_run_at_the_lowest_cpu_priority_and_requests_keep_theirs() -> None:
    heavy = HeavyWork(2)
    try:
        priorities = {heavy.submit(thread_priority).result(timeout=10) for _ in range(4)}
    finally:
        heavy.shutdown()
    assert priorities == {LOWEST}
    assert thread_priority() < LOWEST  # the caller's thread is untouched


def test_tokenizing_runs_in_another_process_at_the_lowest_priority() -> None:
    assert submit_to_process(os.getpid).result(timeout=120) != os.getpid()
    assert submit_to_process(process_priority).result(timeout=120) == LOWEST
    assert process_priority() < LOWEST


def loaded_model_files() -> tuple[int, int, int]:
    """In the tokenizing process: tokenizers and configs loaded, and tokenizer cache hits."""
    return model_tokenizer.cache_info().currsize, model_limits.cache_info().currsize, model_tokenizer.cache_info().hits


def clear_model_files() -> None:
    model_tokenizer.cache_clear()
    model_limits.cache_clear()


def test_the_api_loads_its_models_tokenizers_and_configs_at_start_up(settings: Settings) -> None:
    submit_to_process(clear_model_files).result(timeout=120)
    clear_model_files()  # an earlier test may have loaded them in this process
    app = create_app(settings)
    with TestClient(app):
        app.state.model_files.result(timeout=120)
        # Both served models (generation and embeddings) are loaded, and no request asked.
        assert submit_to_process(loaded_model_files).result(timeout=60) == (2, 2, 0)
    assert model_tokenizer.cache_info().currsize == 0  # not in the API's own process
