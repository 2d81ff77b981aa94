"""Models: what the service serves now, in OpenAI's `model` shape."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.api.deps import CallerDep, RecordsDep, SettingsDep
from app.core.errors import NotFound
from app.jobs.served_models import ModelKind, ServedModel, served_models

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the longest-running worker holding it started (unix seconds)")
    owned_by: str = "llm-batch"
    # This service's extras.
    kind: ModelKind = Field(
        description="what holds it: a generation or embedding worker, or a LoRA adapter on the generation model"
    )
    endpoints: list[str] = Field(description="the batch endpoints whose lines it runs")
    ready_workers: int = Field(description="workers holding it that are ready and heartbeat")
    parent: str | None = Field(default=None, description="a LoRA adapter's base model")

    @classmethod
    def of(cls, model: ServedModel) -> ModelObject:
        return cls(
            id=model.id,
            created=model.created,
            kind=model.kind,  # type: ignore[arg-type]
            endpoints=model.endpoints,
            ready_workers=model.ready_workers,
            parent=model.parent,
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


@router.get("", response_model=ModelList)
async def list_models(_caller: CallerDep, records: RecordsDep, settings: SettingsDep) -> ModelList:
    """Every model a ready worker serves, and every LoRA adapter of the generation model."""
    models = await run_in_threadpool(served_models, records, settings)
    return ModelList(data=[ModelObject.of(m) for m in models])


@router.get("/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, _caller: CallerDep, records: RecordsDep, settings: SettingsDep) -> ModelObject:
    """One served model (ids may hold slashes, as Hugging Face ids do)."""
    for model in await run_in_threadpool(served_models, records, settings):
        if model.id == model_id:
            return ModelObject.of(model)
    raise NotFound("model", model_id)
