"""`GET /metrics` in Prometheus' text format, read from Postgres at scrape time so it is
right however many API and worker processes there are."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from app.data.models import JobStatus
from app.data.records import Records

WINDOW_SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]


class ServiceCollector(Collector):
    def __init__(self, records: Records) -> None:
        self.records = records

    def collect(self) -> Iterator[Metric]:
        snap = self.records.metrics_snapshot(WINDOW_SECONDS_BUCKETS)
        jobs = GaugeMetricFamily("llm_batch_jobs", "Batches (jobs) by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], snap.jobs_by_status.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "llm_batch_queue_depth_lines", "Input lines waiting or running", value=snap.queued_lines
        )
        by_model = GaugeMetricFamily(
            "llm_batch_queue_lines",
            "Input lines not yet recorded of queued or in-progress batches, by model (0 for a model that a "
            "registered worker serves and that has none): what an autoscaler of that model's workers reads",
            labels=["model"],
        )
        for model, lines in sorted(snap.queued_lines_by_model.items()):
            by_model.add_metric([model], lines)
        yield by_model

        generated = CounterMetricFamily("llm_batch_generated_tokens", "Generated tokens", labels=["worker"])
        prompt = CounterMetricFamily("llm_batch_prompt_tokens", "Prompt tokens", labels=["worker"])
        batches = CounterMetricFamily(
            "llm_batch_static_batches", "Static batches run (generate calls)", labels=["worker"]
        )
        seconds = HistogramMetricFamily(
            "llm_batch_window_seconds",
            "Generate seconds of each recorded window (one static batch, or several under length-aware packing)",
            labels=["worker"],
        )
        for w in snap.per_worker:
            generated.add_metric([w.worker_id], w.completion_tokens)
            prompt.add_metric([w.worker_id], w.prompt_tokens)
            batches.add_metric([w.worker_id], w.static_batches)
            buckets = [
                (str(edge), count) for edge, count in zip(WINDOW_SECONDS_BUCKETS, w.seconds_at_or_below, strict=True)
            ]
            seconds.add_metric([w.worker_id], [*buckets, ("+Inf", w.windows)], sum_value=w.generate_seconds)
        yield from (generated, prompt, batches, seconds)

        up = GaugeMetricFamily(
            "llm_batch_worker_heartbeat_timestamp_seconds", "Last heartbeat", labels=["worker", "model"]
        )
        for worker in snap.workers:
            up.add_metric([worker.id, worker.model], worker.heartbeat_at.timestamp())
        yield up


def render(records: Records) -> bytes:
    registry = CollectorRegistry()
    registry.register(ServiceCollector(records))
    return bytes(generate_latest(registry))
