"""The HTTP API (FastAPI): submit, watch and cancel jobs and batches per tenant.

Every error is JSON ``{"error": {"code", "message", ...}}`` with a stable code. A tenant sees only
its own jobs, batches and deliveries: anything else is a 404, exactly like a missing id.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.errors import BatchRenderError, InvalidRequest, JobNotFound, TransientError
from jobs.names import KEY_PREFIX
from jobs.schemas import RenderRequest
from jobs.settings import Settings
from jobs.status import JobStatus

MAX_WAIT_S = 60
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")
_ERROR_SCHEMA = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
ERRORS = {400: {"description": "Bad request", **_ERROR_SCHEMA}, 401: {"description": "No or unknown API key", **_ERROR_SCHEMA},
          404: {"description": "Not found", **_ERROR_SCHEMA}, 409: {"description": "Conflict", **_ERROR_SCHEMA},
          413: {"description": "Body too large", **_ERROR_SCHEMA}, 422: {"description": "Invalid or blocked", **_ERROR_SCHEMA},
          429: {"description": "Rate limited", **_ERROR_SCHEMA}, 503: {"description": "Broker unavailable", **_ERROR_SCHEMA}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers or {}, extra


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchCreate(BaseModel):
    """A batch as JSON. Each item is a render request (``custom_id`` recommended)."""

    model_config = ConfigDict(extra="forbid")
    requests: list[dict[str, Any]] = Field(..., max_length=10_000)
    webhook: str | None = Field(None, max_length=2048)
    webhook_events_filter: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, *, client=None) -> FastAPI:
    from producer.client import Client
    from producer.tenants import Tenants

    settings = settings or Settings.from_env()
    client = client or Client(settings)
    tenants = Tenants(client.store.r)
    app = FastAPI(title="batchrender", version="1", description=__doc__,
                  responses={k: v for k, v in ERRORS.items()})
    app.state.client = client

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return _error(e.status, e.code, e.message, e.headers, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in err["loc"][1:]) or "body", "message": err["msg"]} for err in e.errors()]
        return _error(422, "invalid_request", "; ".join(f"{x['field']}: {x['message']}" for x in errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail))

    @app.exception_handler(BatchRenderError)
    async def _domain(_: Request, e: BatchRenderError):
        status = 404 if isinstance(e, JobNotFound) else 503 if isinstance(e, TransientError) else 422
        return _error(status, e.code, e.message, **({"errors": e.details["errors"]} if e.details.get("errors") else {}))

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.api_max_body_bytes):
            return _error(413, "body_too_large", f"request bodies are limited to {settings.api_max_body_bytes} bytes")
        return await call_next(request)

    # -- helpers ---------------------------------------------------------------------------------
    def tenant_of(authorization: str | None) -> str:
        key = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else None
        tenant = tenants.authenticate(key)
        if tenant is None:
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API key>'; keys come from "
                           "'batchrender tenants create'", headers={"WWW-Authenticate": "Bearer"})
        allowed, wait = tenants.allow(tenant, settings.api_rate_per_s, settings.api_burst)
        if not allowed:
            raise ApiError(429, "rate_limited", f"more than {settings.api_rate_per_s:g} requests/s",
                           headers={"Retry-After": str(max(1, round(wait + 0.5)))})
        return tenant

    def check_capacity(tenant: str, adding: int) -> None:
        active = client.store.tenant_active(tenant)
        if active + adding > settings.api_max_queued_per_tenant:
            raise ApiError(429, "too_many_queued_jobs", f"{active} jobs are queued or running; the limit is "
                           f"{settings.api_max_queued_per_tenant}", headers={"Retry-After": "5"})

    def own_job(tenant: str, job_id: str):
        try:
            rec = client.store.get(job_id)
        except JobNotFound:
            rec = None
        if rec is None or rec.tenant != tenant:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return rec

    def own_batch(tenant: str, batch_id: str) -> dict[str, Any]:
        try:
            info = client.store.batch_info(batch_id)
        except JobNotFound:
            info = None
        if info is None or info.get("tenant") != tenant:
            raise ApiError(404, "not_found", f"no batch {batch_id!r}")
        return info

    def job_view(rec) -> dict[str, Any]:
        view = rec.to_dict()
        if rec.status is JobStatus.QUEUED:
            view["queue_position"] = client.store.queue_position(rec.job_id, rec.model)
        return view

    def check_webhook(req: RenderRequest) -> None:
        if req.webhook:
            from webhooks.events import parse_event_filter
            from webhooks.ssrf import check_url

            check_url(req.webhook, settings.webhook_allow_hosts)
            parse_event_filter(req.webhook_events_filter)

    # -- jobs ------------------------------------------------------------------------------------
    @app.post("/v1/jobs", status_code=201, tags=["jobs"])
    def create_job(body: RenderRequest, response: Response, authorization: str | None = Header(None),
                   idempotency_key: str | None = Header(None, max_length=255),
                   prefer: str | None = Header(None)) -> dict[str, Any]:
        """Queue a render. ``Idempotency-Key`` makes retries safe; ``Prefer: wait=N`` waits up to N s."""
        tenant = tenant_of(authorization)
        check_webhook(body)
        idem_key = None
        if idempotency_key:
            digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
            idem_key = f"{KEY_PREFIX}idem:{tenant}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
            job_id = "job_" + hashlib.sha256(f"{tenant}:{idempotency_key}".encode()).hexdigest()[:32]
            stored = client.store.r.set(idem_key, json.dumps({"body": digest, "job_id": job_id}),
                                        nx=True, ex=24 * 3600)
            if not stored:
                prior = json.loads(client.store.r.get(idem_key))
                if prior["body"] != digest:
                    raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with a different body")
                response.status_code = 200
                response.headers["Idempotent-Replayed"] = "true"
                return job_view(own_job(tenant, prior["job_id"]))
        else:
            job_id = None
        try:
            check_capacity(tenant, 1)
            msg = client.prepare(body, tenant=tenant, job_id=job_id)
            client.enqueue(msg)
        except BaseException:
            if idem_key:
                client.store.r.delete(idem_key)  # nothing was accepted: let the client retry the key
            raise
        rec = client.store.get(msg.job_id)
        wait = _PREFER_WAIT.search(prefer or "")
        if wait and not rec.status.terminal:
            seconds = min(MAX_WAIT_S, int(wait.group(1)))
            response.headers["Preference-Applied"] = f"wait={seconds}"
            try:
                rec = client.wait(msg.job_id, timeout=seconds, poll_s=0.05)
            except TimeoutError:
                rec = client.store.get(msg.job_id)
        if rec.status is JobStatus.BLOCKED:
            raise ApiError(422, "moderation_blocked", (rec.error or {}).get("message") or "blocked by the content policy",
                           job_id=rec.job_id, stage=(rec.error or {}).get("stage"),
                           categories=(rec.error or {}).get("categories", []))
        return job_view(rec)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """Status, queue position while queued, progress while running, outputs when done."""
        return job_view(own_job(tenant_of(authorization), job_id))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        tenant = tenant_of(authorization)
        own_job(tenant, job_id)
        return job_view(client.cancel(job_id))

    # -- batches ---------------------------------------------------------------------------------
    @app.post("/v1/batches", status_code=201, tags=["batches"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": BatchCreate.model_json_schema()},
        "application/jsonl": {"schema": {"type": "string", "description": "one request per line, with custom_id"}}}}})
    async def create_batch(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        """A batch from a JSON list or a JSONL upload; bad items are reported, the valid ones run."""
        tenant = tenant_of(authorization)
        raw = await request.body()
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        webhook = events_filter = None
        meta: dict[str, Any] = {}
        items: list[tuple[int, Any]] = []
        errors: list[dict[str, Any]] = []
        if ctype in ("application/jsonl", "application/x-ndjson", "application/x-jsonlines", "text/plain"):
            for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                if line.strip():
                    try:
                        items.append((lineno, json.loads(line)))
                    except ValueError as e:
                        errors.append({"line": lineno, "code": "invalid_json", "message": str(e)})
        elif ctype == "application/json":
            try:
                body = BatchCreate.model_validate_json(raw)
            except ValueError as e:
                raise ApiError(422, "invalid_request", f"batch body: {e}") from None
            items = list(enumerate(body.requests, 1))
            webhook, events_filter, meta = body.webhook, body.webhook_events_filter, body.metadata
        else:
            raise ApiError(415, "unsupported_media_type", "send application/json or application/jsonl")
        good: list[tuple[int, RenderRequest]] = []
        for line, item in items:
            try:
                if not isinstance(item, dict):
                    raise InvalidRequest("each item must be a JSON object")
                if webhook and "webhook" not in item:
                    item = {**item, "webhook": webhook, "webhook_events_filter": events_filter}
                req = RenderRequest.parse(item)
                check_webhook(req)
                good.append((line, req))
            except InvalidRequest as e:
                errors.append({"line": line, "custom_id": item.get("custom_id") if isinstance(item, dict) else None,
                               "code": e.code, "message": e.message, "errors": e.errors})
        check_capacity(tenant, len(good))
        import asyncio

        sub = await asyncio.to_thread(client.submit_batch, [r for _, r in good], tenant=tenant, meta=meta)
        for index, e in sub.errors:
            line, req = good[index]
            errors.append({"line": line, "custom_id": req.custom_id, "code": e.code, "message": e.message,
                           "errors": e.errors})
        info = client.store.batch_info(sub.batch_id)
        return {**info, "accepted": len(sub.job_ids), "rejected": len(errors),
                "errors": sorted(errors, key=lambda x: x["line"])}

    @app.get("/v1/batches/{batch_id}", tags=["batches"])
    def get_batch(batch_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """Status and counts: total, succeeded, failed, blocked, canceled."""
        return own_batch(tenant_of(authorization), batch_id)

    @app.get("/v1/batches/{batch_id}/results", tags=["batches"], response_class=PlainTextResponse)
    def batch_results(batch_id: str, authorization: str | None = Header(None)) -> PlainTextResponse:
        """JSONL, one line per job, joined on ``custom_id``."""
        own_batch(tenant_of(authorization), batch_id)
        lines = []
        for rec in client.batch_results(batch_id):
            view = rec.to_dict()
            lines.append(json.dumps({"custom_id": rec.custom_id, "job_id": rec.job_id, "status": rec.status.value,
                                     "outputs": view.get("outputs", []), "error": rec.error}))
        return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""), media_type="application/jsonl")

    @app.post("/v1/batches/{batch_id}/cancel", tags=["batches"])
    def cancel_batch(batch_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        own_batch(tenant_of(authorization), batch_id)
        return client.cancel_batch(batch_id)

    # -- deliveries ------------------------------------------------------------------------------
    @app.get("/v1/deliveries", tags=["webhooks"])
    def deliveries(job_id: str | None = None, authorization: str | None = Header(None)) -> dict[str, Any]:
        """This tenant's webhook events and their delivery attempts."""
        from webhooks.store import DeliveryStore

        tenant = tenant_of(authorization)
        ds = DeliveryStore(client.store.r, settings.record_ttl_s)
        if job_id:
            own_job(tenant, job_id)
        events = ds.by_job(job_id) if job_id else ds.by_tenant(tenant)
        fields = ("id", "type", "url", "job_id", "batch_id", "state", "attempts", "last_status", "last_error",
                  "created_at", "updated_at")
        return {"data": [{**{f: getattr(e, f) for f in fields},
                          "attempt_log": [a.__dict__ for a in ds.attempts(e.id)]}
                         for e in events if e.tenant == tenant]}

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        client.store.r.ping()
        return {"ok": True, "time": time.time()}

    app.openapi_schema = None
    _add_error_schema(app)
    return app


def _add_error_schema(app: FastAPI) -> None:
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}")
        schema["components"]["schemas"].update(ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}))
        schema["components"]["schemas"]["ErrorBody"].pop("$defs", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
