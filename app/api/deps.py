"""Dependencies the handlers declare, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.auth import KeyCache, Principal, verify_key
from app.api.batch_views import BatchViews
from app.api.text import unstorable
from app.core.errors import InvalidRequest
from app.core.settings import Settings
from app.core.storage import ObjectStore
from app.data.queue import JobQueue
from app.data.records import Records
from app.data.uploads import Uploads
from app.jobs.sweeper import Sweeper

# The trivial dependencies are `async def`: a sync one costs a thread-pool hop per request.


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_records(request: Request) -> Records:
    records: Records = request.app.state.records
    return records


async def get_batch_views(request: Request) -> BatchViews:
    views: BatchViews = request.app.state.batch_views
    return views


async def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


async def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


async def get_uploads(request: Request) -> Uploads:
    uploads: Uploads = request.app.state.uploads
    return uploads


async def get_sweeper(request: Request) -> Sweeper:
    sweeper: Sweeper = request.app.state.sweeper
    return sweeper


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RecordsDep = Annotated[Records, Depends(get_records)]
BatchViewsDep = Annotated[BatchViews, Depends(get_batch_views)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]
SweeperDep = Annotated[Sweeper, Depends(get_sweeper)]


bearer = HTTPBearer(auto_error=False, description="an API key made with `llm-batch keys create`")


async def current_principal(
    request: Request, records: RecordsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller: the one `RequestGate` found from the headers before the body, else
    looked up here (a key verified in the last few seconds is not looked up again)."""
    found: Principal | None = request.scope.get("state", {}).get("principal")
    if found is not None:
        return found
    cache: KeyCache = request.app.state.key_cache
    return await verify_key(records, cache, credentials.credentials if credentials else None)


CallerDep = Annotated[Principal, Depends(current_principal)]


async def refuse_unstorable_params(request: Request) -> None:
    """Path and query strings Postgres cannot store (NUL, lone surrogates) are a 400
    naming the parameter, before any lookup."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if isinstance(value, str) and (reason := unstorable(value)):
            raise InvalidRequest(f"{name}: {reason}.", param=name, code="invalid_value")
