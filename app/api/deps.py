"""Dependencies the handlers declare, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import Principal, authenticate
from app.config import Settings
from app.errors import Forbidden
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


bearer = HTTPBearer(auto_error=False, description="an API key made with `llm-batch keys create`")


def current_principal(
    repo: RepoDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    return authenticate(repo, credentials.credentials if credentials else None)


CallerDep = Annotated[Principal, Depends(current_principal)]


def require_admin(caller: CallerDep) -> Principal:
    if not caller.is_admin:
        raise Forbidden("This needs an admin key.")
    return caller


AdminDep = Annotated[Principal, Depends(require_admin)]
