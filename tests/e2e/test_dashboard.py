"""An admin's browser (Playwright driving Debian's Chromium) against a running service
with a finished job and a running job: every figure on the pages matches the database.
Once the running job has recorded a window, its worker's process group (engine included)
is paused with SIGSTOP: the job stays in progress with its shard leased, and the browser
gets the cores instead of competing with the engine for them."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from app.core.database import Database
from app.data.records import Records
from app.jobs.stats import job_stats
from tests.conftest import ROOT
from tests.e2e.conftest import Service
from tests.e2e.test_service import wait_until_done
from tests.helpers import chat_line, completion_line, jsonl

pytestmark = pytest.mark.engine
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def submit(service: Service, rows: list[dict], endpoint: str, batch_size: int) -> str:  # type: ignore[type-arg]
    with service.client("analyst") as client:
        file_id = client.post("/v1/files", files={"file": ("in.jsonl", jsonl(rows))}, data={"purpose": "batch"}).json()[
            "id"
        ]
        batch = client.post(
            "/v1/batches", json={"input_file_id": file_id, "endpoint": endpoint, "batch_size": batch_size}
        )
        return str(batch.json()["id"])


def shot(page: Page, name: str) -> None:
    """A screenshot for people to look at, not a check: on two cores busy with the engine a
    full-page capture can take longer than Playwright's 30 s, which must not fail the test."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled", timeout=120_000)
    except PlaywrightTimeoutError:
        warnings.warn(f"no {name} screenshot: the page took too long to capture", stacklevel=2)


def cell(page: Page, batch_id: str, css: str) -> str:
    return page.locator(f'tr[data-batch-id="{batch_id}"] {css}').inner_text().strip()


def test_an_admin_sees_jobs_throughput_and_workers_as_the_database_has_them(service: Service, browser: Browser) -> None:
    service.start_api()
    worker = service.start_worker()
    service.wait_for("/readyz")
    finished = submit(
        service,
        [completion_line(f"f{i}", f"done {i}", max_tokens=3 + i % 5) for i in range(120)],
        "/v1/completions",
        16,
    )
    with service.client("analyst") as client:
        wait_until_done(client, finished)
    running = submit(
        service, [chat_line(f"r{i}", f"long {i}", max_tokens=128) for i in range(3000)], "/v1/chat/completions", 4
    )
    db = Database(service.env["DATABASE_URL"])
    records = Records(db)
    while records.get_job(running).request_completed == 0:
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGSTOP)  # the worker leads its group: the engine pauses too
    try:
        browse_as_admin(service, browser, records, finished, running)
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
        db.dispose()


def browse_as_admin(service: Service, browser: Browser, records: Records, finished: str, running: str) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{service.url}/admin")
    assert page.url.endswith("/admin/login")  # logged out: nothing but the login form
    assert finished not in page.content()
    page.fill('input[name="api_key"]', service.api_key("ops", admin=True))
    page.click('button[type="submit"]')
    page.wait_for_url(f"{service.url}/admin")

    # Jobs: the finished job's figures are exactly the database's; the running one is in progress.
    page.set_default_timeout(90_000)  # a busy machine renders slowly
    page.wait_for_selector(f'tr[data-batch-id="{finished}"]', state="attached")
    done = records.get_job(finished)
    assert cell(page, finished, ".status") == "completed"
    assert cell(page, finished, ".lines") == f"{done.request_completed}/{done.request_total}"
    assert int(cell(page, finished, ".tokens")) == done.completion_tokens
    assert float(cell(page, finished, ".tps")) == pytest.approx(
        done.completion_tokens / done.generate_seconds, abs=0.06
    )
    assert cell(page, finished, ".owner") == "analyst"
    assert cell(page, running, ".status") == "in_progress"
    assert int(cell(page, running, ".tokens")) <= records.get_job(running).completion_tokens
    shot(page, "jobs")
    for _ in range(5):  # the page refreshes itself every 5 s while a job runs: a refresh may reset the form
        page.select_option('select[name="status"]', "completed")
        page.click("form.filters button")
        page.wait_for_load_state()
        if "status=completed" in page.url:
            break
    assert "status=completed" in page.url
    assert page.locator(f'tr[data-batch-id="{running}"]').count() == 0
    assert page.locator(f'tr[data-batch-id="{finished}"]').count() == 1

    # One job: the cards and the per-window chart match its recorded static batches.
    page.goto(f"{service.url}/admin/batches/{finished}")
    runs = records.windows(finished)
    stats = job_stats(done, runs)
    assert int(page.inner_text("#tokens")) == stats.completion_tokens
    assert int(page.inner_text("#static-batches")) == sum(r.static_batches for r in runs) == 8  # 1 packed window
    assert float(page.inner_text("#gen-tps")) == stats.generation_tokens_per_second
    points = page.evaluate("Chart.getChart('per-window').data.datasets[0].data")
    assert points == [pytest.approx(round(r.tokens_per_second, 1)) for r in sorted(runs, key=lambda r: r.created_at)]
    assert page.evaluate("Chart.getChart('lengths').data.datasets[0].data.reduce((a, b) => a + b, 0)") == 120
    assert page.locator("#output-link").count() == 1
    shot(page, "job")

    page.goto(f"{service.url}/admin/throughput")
    assert float(cell(page, finished, ".tps")) == pytest.approx(
        done.completion_tokens / done.generate_seconds, abs=0.06
    )
    assert page.evaluate("Chart.getChart('throughput').data.datasets[0].data.length") >= 1
    shot(page, "throughput")

    page.goto(f"{service.url}/admin/workers")
    [worker] = records.list_workers()
    row = page.locator(f'tr[data-worker-id="{worker.id}"]')
    assert "demo-llama" in row.inner_text() and running in row.inner_text()
    shot(page, "workers")
    page.close()


def test_a_non_admin_cannot_open_the_dashboard(service: Service, browser: Browser) -> None:
    service.start_api()
    page = browser.new_page()
    page.goto(f"{service.url}/admin/login")
    page.fill('input[name="api_key"]', service.api_key("analyst"))
    page.click('button[type="submit"]')
    assert "admin" in page.content() and page.locator("table").count() == 0
    response = page.goto(f"{service.url}/admin")
    assert response is not None and response.url.endswith("/admin/login")
    page.close()
