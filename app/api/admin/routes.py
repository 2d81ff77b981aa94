"""The admin dashboard: server-rendered pages of jobs, their throughput, and workers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from app.api.admin.session import PRE_SESSION_COOKIE, SESSION_COOKIE, SESSION_SECONDS, SessionSigner, new_pre_session
from app.api.auth import Principal, authenticate
from app.api.deps import RecordsDep, SettingsDep, StoreDep, refuse_unstorable_params
from app.core.errors import Forbidden, Unauthorized
from app.data.models import Job, JobStatus
from app.data.quotas import Quotas
from app.jobs.endpoints import ENDPOINTS
from app.jobs.estimate import deadline_at_risk
from app.jobs.quotas import use_and_limits
from app.jobs.stats import job_stats, throughput, window_series

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
RECENT_WORKER_SECONDS = 300
JOBS_PAGE = 200
SORT_KEYS = {
    "created": lambda b: b.created_at,
    "status": lambda b: b.status,
    "owner": lambda b: b.owner,
    "lines": lambda b: b.request_total,
    "tokens": lambda b: b.completion_tokens,
    "tokens_per_second": lambda b: throughput(b).generation_tokens_per_second or 0.0,
    "batch_size": lambda b: b.batch_size or 0,
    "accelerator_seconds": lambda b: b.accelerator_seconds,
    "duration": lambda b: throughput(b).end_to_end_seconds or 0.0,
}

# Ids and query values Postgres cannot store are a 400 before any lookup, as on /v1.
router = APIRouter(
    prefix="/admin", tags=["admin"], include_in_schema=False, dependencies=[Depends(refuse_unstorable_params)]
)


class LoginRequired(Exception):
    """Raised by admin pages for a browser without a session; answered with a redirect."""


def _signer(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.session_signer
    return signer


def admin_caller(request: Request, records: RecordsDep) -> Principal:
    """An admin from the session cookie (or a Bearer admin key); others get 403."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        caller = authenticate(records, header[7:])
    else:
        key_id = _signer(request).key_id(request.cookies.get(SESSION_COOKIE))
        key = records.key_by_id(key_id) if key_id else None
        if key is None:
            raise LoginRequired
        caller = Principal(owner=key.owner, is_admin=key.is_admin, key_id=key.id)
    if not caller.is_admin:
        raise Forbidden("The dashboard is for admins.")
    return caller


AdminPage = Annotated[Principal, Depends(admin_caller)]


def _row(job: Job) -> dict[str, Any]:
    done = job.request_completed + job.request_failed
    rates = throughput(job)
    return {
        "job": job,
        "progress": round(100 * done / job.request_total, 1) if job.request_total else 0.0,
        "tokens_per_second": rates.generation_tokens_per_second,
        "duration": rates.end_to_end_seconds,
        "at_risk": deadline_at_risk(job),  # cannot finish by its deadline at the measured rate
    }


def _page(request: Request, template: str, caller: Principal, **context: Any) -> HTMLResponse:
    csrf = _signer(request).csrf_token(request.cookies.get(SESSION_COOKIE, ""))
    return TEMPLATES.TemplateResponse(request, template, {"caller": caller, "csrf": csrf, **context})


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    binding = request.cookies.get(PRE_SESSION_COOKIE) or new_pre_session()
    response = TEMPLATES.TemplateResponse(
        request, "login.html", {"csrf": _signer(request).csrf_token(binding), "error": None}
    )
    response.set_cookie(PRE_SESSION_COOKIE, binding, httponly=True, samesite="strict", max_age=600)
    return response


@router.post("/login")
def login(
    request: Request, records: RecordsDep, api_key: Annotated[str, Form()], csrf: Annotated[str, Form()]
) -> Response:
    signer = _signer(request)
    if not signer.csrf_ok(request.cookies.get(PRE_SESSION_COOKIE), csrf):
        raise Forbidden("Bad or missing CSRF token; reload the login page.")
    try:
        caller = authenticate(records, api_key)
    except Unauthorized:
        return TEMPLATES.TemplateResponse(
            request, "login.html", {"csrf": csrf, "error": "Unknown or revoked key."}, status_code=401
        )
    if not caller.is_admin:
        raise Forbidden("The dashboard is for admins; this key is not an admin key.")
    redirect = RedirectResponse("/admin", status_code=303)
    redirect.set_cookie(
        SESSION_COOKIE,
        signer.issue(caller.key_id),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    redirect.delete_cookie(PRE_SESSION_COOKIE)
    return redirect


@router.post("/logout")
def logout(request: Request, caller: AdminPage, csrf: Annotated[str, Form()]) -> Response:
    if not _signer(request).csrf_ok(request.cookies.get(SESSION_COOKIE), csrf):
        raise Forbidden("Bad or missing CSRF token.")
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("", response_class=HTMLResponse)
def jobs(
    request: Request,
    caller: AdminPage,
    records: RecordsDep,
    status: str | None = None,
    owner: str | None = None,
    endpoint: str | None = None,
    sort: str = "created",
    order: str = "desc",
) -> HTMLResponse:
    batches = records.list_all_jobs(status or None, owner or None, JOBS_PAGE, endpoint or None)
    key = SORT_KEYS.get(sort, SORT_KEYS["created"])
    batches.sort(key=key, reverse=order != "asc")  # type: ignore[arg-type]
    running = any(b.status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS, JobStatus.FINALIZING) for b in batches)
    return _page(
        request,
        "jobs.html",
        caller,
        rows=[_row(b) for b in batches],
        statuses=[s.value for s in JobStatus],
        status=status or "",
        endpoints=list(ENDPOINTS),  # the kinds the registry serves
        endpoint=endpoint or "",
        owner=owner or "",
        sort=sort,
        order=order,
        refresh=running,
    )


@router.get("/batches/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: str, caller: AdminPage, records: RecordsDep, settings: SettingsDep) -> HTMLResponse:
    job = records.get_job(job_id)
    runs = records.windows(job_id)
    series = [point.model_dump() for point in window_series(runs)]
    cumulative, total = [], 0
    for point in series:
        total += point["completion_tokens"]
        cumulative.append(total)
    return _page(
        request,
        "job.html",
        caller,
        row=_row(job),
        stats=job_stats(job, runs, settings.gpu_hour_price).model_dump(),
        series=series,
        cumulative=cumulative,
        refresh=job.status in (JobStatus.QUEUED, JobStatus.IN_PROGRESS, JobStatus.FINALIZING),
    )


@router.get("/throughput", response_class=HTMLResponse)
def throughput_page(request: Request, caller: AdminPage, records: RecordsDep) -> HTMLResponse:
    batches = [b for b in records.list_all_jobs(None, None, JOBS_PAGE) if b.generate_seconds > 0][::-1]
    return _page(request, "throughput.html", caller, rows=[_row(b) for b in batches])


@router.get("/workers", response_class=HTMLResponse)
def workers(request: Request, caller: AdminPage, records: RecordsDep) -> HTMLResponse:
    rates = records.recent_worker_rates(RECENT_WORKER_SECONDS)
    rows = [
        {"worker": w, "rate": rates.get(w.id), "shard": records.shard_by_id(w.current_shard_id)}
        for w in records.list_workers()
    ]
    return _page(request, "workers.html", caller, rows=rows, window=RECENT_WORKER_SECONDS, refresh=True)


@router.get("/owners", response_class=HTMLResponse)
def owners(request: Request, caller: AdminPage, records: RecordsDep, settings: SettingsDep) -> HTMLResponse:
    """Each owner's use against its quotas (app.jobs.quotas)."""
    quotas = Quotas(records.db)
    rows = [(owner, *use_and_limits(quotas, settings, owner)) for owner in quotas.owners()]
    return _page(request, "owners.html", caller, rows=rows)


@router.get("/files/{file_id}/content")
def file_content(file_id: str, caller: AdminPage, records: RecordsDep, store: StoreDep) -> StreamingResponse:
    record = records.get_file(file_id)
    return StreamingResponse(store.read_chunks(record.storage_key), media_type="application/jsonl")


def install_admin(app: FastAPI) -> None:
    """Mounts the pages, the vendored chart library, and the login redirect."""
    from fastapi.staticfiles import StaticFiles

    app.include_router(router)
    app.mount("/admin/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="admin-static")

    @app.exception_handler(LoginRequired)
    async def to_login(_: Request, __: LoginRequired) -> Response:
        return RedirectResponse("/admin/login", status_code=303)
