"""Which models the service serves right now: every model a ready worker holds, and every
LoRA adapter of a base model a ready worker holds, each with its kind and the endpoints
that reach it (from the endpoint registry). `GET /v1/models` answers this list."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from app.core.settings import Settings, WorkerKind
from app.data.models import Worker
from app.data.records import Records
from app.jobs.endpoints import worker_kinds

ModelKind = Literal["generate", "embed", "lora"]  # a worker kind's model, or a LoRA adapter of a generate model


@dataclass(frozen=True)
class ServedModel:
    id: str
    kind: ModelKind
    endpoints: list[str]
    ready_workers: int
    created: int  # when the longest-running of its workers started (unix seconds)
    parent: str | None = None  # a LoRA adapter's base model


def served_models(records: Records, settings: Settings) -> list[ServedModel]:
    """Models with a worker that is ready and heartbeats, then the adapters of the base model."""
    workers: dict[str, list[Worker]] = defaultdict(list)
    for worker in records.ready_workers(stale_after_seconds=settings.lease_seconds):
        workers[worker.model].append(worker)
    served = []
    for model, held_by in sorted(workers.items()):
        kind: WorkerKind = "embed" if model == settings.embedding_model_name else "generate"
        created = int(min(w.started_at for w in held_by).timestamp())
        served.append(ServedModel(model, kind, worker_kinds().get(kind, []), len(held_by), created))
    base = next((m for m in served if m.id == settings.model_name), None)
    if base is not None:
        for adapter in sorted(settings.lora_modules):
            served.append(ServedModel(adapter, "lora", base.endpoints, base.ready_workers, base.created, base.id))
    return served
