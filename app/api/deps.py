"""Dependencies the handlers declare, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.repository import JobRepository
from app.storage import ObjectStore


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_repo(request: Request) -> JobRepository:
    repo: JobRepository = request.app.state.repo
    return repo


def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RepoDep = Annotated[JobRepository, Depends(get_repo)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
