"""Dependencies the handlers declare, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.auth import KeyCache, Principal, authenticate
from app.core.errors import Forbidden
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.repository import JobRepository

# The trivial dependencies are `async def`: a sync one costs a thread-pool hop per request.


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_repo(request: Request) -> JobRepository:
    repo: JobRepository = request.app.state.repo
    return repo


async def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RepoDep = Annotated[JobRepository, Depends(get_repo)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]


bearer = HTTPBearer(auto_error=False, description="an API key made with `llm-batch keys create`")


async def current_principal(
    request: Request, repo: RepoDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller; a key verified in the last few seconds is not looked up again."""
    secret = credentials.credentials if credentials else None
    if not secret:
        return authenticate(repo, secret)  # raises: no key
    cache: KeyCache = request.app.state.key_cache
    cached = cache.get(secret)
    if cached is not None:
        return cached
    principal = await run_in_threadpool(authenticate, repo, secret)
    cache.put(secret, principal)
    return principal


CallerDep = Annotated[Principal, Depends(current_principal)]


async def require_admin(caller: CallerDep) -> Principal:
    if not caller.is_admin:
        raise Forbidden("This needs an admin key.")
    return caller


AdminDep = Annotated[Principal, Depends(require_admin)]
