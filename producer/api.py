"""The HTTP API (FastAPI): submit, watch and cancel jobs and batches per tenant.

Every error is JSON ``{"error": {"code", "message", ...}}`` with a stable code. A tenant sees only
its own jobs, batches and deliveries: anything else is a 404, exactly like a missing id.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import Any

import redis
from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.errors import (BatchRenderError, DeliveryFailed, InvalidRequest, JobNotFound, TransientError,
                         WebhookTargetRefused)
from jobs.names import KEY_PREFIX
from jobs.schemas import RenderRequest, invalid_from
from jobs.settings import Settings
from jobs.status import JobStatus

MAX_WAIT_S = 60
#: Items in one batch, as a JSON list or JSONL lines.
MAX_BATCH_ITEMS = 10_000
#: How long a request that replays an Idempotency-Key waits for the first one to record its job.
IDEMPOTENCY_RACE_S = 2.0
# Characters no host name holds; refused at submission rather than failing every delivery attempt.
_BAD_HOST_CHARS = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`%]")
_JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines", "text/plain")
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")
_ERROR_SCHEMA = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
ERRORS = {400: {"description": "Bad request", **_ERROR_SCHEMA}, 401: {"description": "No or unknown API key", **_ERROR_SCHEMA},
          404: {"description": "Not found", **_ERROR_SCHEMA}, 409: {"description": "Conflict", **_ERROR_SCHEMA},
          413: {"description": "Body too large", **_ERROR_SCHEMA}, 422: {"description": "Invalid or blocked", **_ERROR_SCHEMA},
          429: {"description": "Rate limited", **_ERROR_SCHEMA}, 503: {"description": "Broker unavailable", **_ERROR_SCHEMA}}


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"code", "message", **extra}}``."""

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
    requests: list[dict[str, Any]] = Field(..., max_length=MAX_BATCH_ITEMS)
    webhook: str | None = Field(None, max_length=2048)
    webhook_events_filter: list[str] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


class BodyLimit:
    """413 for bodies over ``limit`` bytes, by ``Content-Length`` or, for chunked uploads, by counting.

    A pure ASGI middleware: a chunked body is read (up to the limit) before the app sees it, so an
    oversized upload is refused with a JSON error instead of failing half-way through a handler.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        response = _error(413, "body_too_large", f"request bodies are limited to {self.limit} bytes",
                          headers={"Connection": "close"})
        await response(scope, receive, send)


def create_app(settings: Settings | None = None, *, client=None) -> FastAPI:
    """The API app. ``client`` (a ``producer.client.Client``) defaults to one built from ``settings``."""
    from producer.client import Client
    from producer.tenants import Tenants

    settings = settings or Settings.from_env()
    client = client or Client(settings)
    tenants = Tenants(client.store.r)
    app = FastAPI(title="batchrender", version="1", description=__doc__,
                  responses={k: v for k, v in ERRORS.items()})
    app.state.client = client
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="An API key from 'batchrender tenants create'.")

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return _error(e.status, e.code, e.message, e.headers, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in err["loc"][1:]) or "body", "message": str(err["msg"])}
                  for err in e.errors()]
        return _error(422, "invalid_request", "; ".join(f"{x['field']}: {x['message']}" for x in errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(BatchRenderError)
    async def _domain(_: Request, e: BatchRenderError):
        status = 404 if isinstance(e, JobNotFound) else 503 if isinstance(e, TransientError) else 422
        return _error(status, e.code, e.message, **({"errors": e.details["errors"]} if e.details.get("errors") else {}))

    @app.exception_handler(redis.RedisError)
    async def _redis(_: Request, e: redis.RedisError):
        return _error(503, "broker_unavailable", "the job store is unavailable; retry shortly", {"Retry-After": "5"})

    # -- helpers ---------------------------------------------------------------------------------
    def current_tenant(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        """The caller's tenant (401 without a valid key), after taking one token from its rate bucket."""
        tenant = tenants.authenticate(credentials.credentials if credentials else None)
        if tenant is None:
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API key>'; keys come from "
                           "'batchrender tenants create'", headers={"WWW-Authenticate": "Bearer"})
        allowed, wait = tenants.allow(tenant, settings.api_rate_per_s, settings.api_burst)
        if not allowed:
            raise ApiError(429, "rate_limited", f"more than {settings.api_rate_per_s:g} requests/s; retry later",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return tenant

    def check_capacity(tenant: str, adding: int) -> None:
        active = client.store.tenant_active(tenant)
        if active + adding > settings.api_max_queued_per_tenant:
            raise ApiError(429, "too_many_queued_jobs", f"{active} jobs are queued or running and this adds "
                           f"{adding}; the limit is {settings.api_max_queued_per_tenant}", headers={"Retry-After": "5"})

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

    def job_response(rec, headers: dict[str, str]) -> dict[str, Any]:
        """The job, or ``moderation_blocked`` (422) when the content policy refused it."""
        if rec.status is JobStatus.BLOCKED:
            error = rec.error or {}
            moderation = (rec.result.moderation if rec.result else None) or {}
            raise ApiError(422, "moderation_blocked", error.get("message") or "blocked by the content policy",
                           headers=headers, job_id=rec.job_id,
                           stage=error.get("stage") or moderation.get("blocking_stage"),
                           categories=error.get("categories") or moderation.get("categories") or [])
        return job_view(rec)

    def check_webhook(req: RenderRequest) -> None:
        """Refuse webhook targets the SSRF guard refuses now; DNS trouble is left to delivery time,
        which checks every attempt again."""
        if not req.webhook:
            return
        from webhooks.events import parse_event_filter
        from webhooks.ssrf import check_url, parse_url

        parse_event_filter(req.webhook_events_filter)
        if _BAD_HOST_CHARS.search(parse_url(req.webhook)[1]):
            raise WebhookTargetRefused("webhook URL host holds characters no host name can have")
        try:
            check_url(req.webhook, settings.webhook_allow_hosts)
        except DeliveryFailed:
            check_url(req.webhook, settings.webhook_allow_hosts, resolve=False)
        except (ValueError, UnicodeError) as e:  # a host name getaddrinfo cannot even encode
            raise WebhookTargetRefused(f"webhook URL host is not a valid name: {e}") from None

    def idempotent_prior(tenant: str, idem_key: str, digest: str):
        """The job an earlier request with this key created, waiting briefly while it is being created."""
        deadline = time.monotonic() + IDEMPOTENCY_RACE_S
        while True:
            raw = client.store.r.get(idem_key)
            if raw is None:
                return None  # the first request failed and released the key: this one proceeds
            prior = json.loads(raw)
            if prior["body"] != digest:
                raise ApiError(409, "idempotency_conflict", "this Idempotency-Key was used with a different "
                               "request body; use a new key for a new request")
            try:
                return own_job(tenant, prior["job_id"])
            except ApiError:
                if time.monotonic() > deadline:
                    raise ApiError(409, "idempotency_in_progress", "a request with this Idempotency-Key is "
                                   "still being processed; retry shortly", headers={"Retry-After": "1"}) from None
                time.sleep(0.05)

    # -- jobs ------------------------------------------------------------------------------------
    @app.post("/v1/jobs", status_code=201, tags=["jobs"])
    def create_job(body: RenderRequest, response: Response, tenant: str = Depends(current_tenant),
                   idempotency_key: str | None = Header(None, max_length=255),
                   prefer: str | None = Header(None, max_length=1024)) -> dict[str, Any]:
        """Queue a render. ``Idempotency-Key`` makes retries safe; ``Prefer: wait=N`` waits up to N s.

        A prompt the content policy refuses is recorded as a ``blocked`` job and answered with 422
        ``moderation_blocked`` (stage and categories), never queued.
        """
        check_webhook(body)
        idem_key = job_id = None
        if idempotency_key:
            digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
            idem_key = f"{KEY_PREFIX}idem:{tenant}:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
            job_id = "job_" + hashlib.sha256(f"{tenant}:{idempotency_key}".encode()).hexdigest()[:32]
            while not client.store.r.set(idem_key, json.dumps({"body": digest, "job_id": job_id}),
                                         nx=True, ex=settings.record_ttl_s):
                prior = idempotent_prior(tenant, idem_key, digest)
                if prior is not None:
                    response.status_code = 200
                    response.headers["Idempotent-Replayed"] = "true"
                    return job_response(prior, {"Idempotent-Replayed": "true"})
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
            seconds = min(MAX_WAIT_S, int(wait.group(1)[:4]))
            response.headers["Preference-Applied"] = f"wait={seconds}"
            try:
                rec = client.wait(msg.job_id, timeout=seconds, poll_s=0.05)
            except TimeoutError:
                rec = client.store.get(msg.job_id)
        return job_response(rec, {})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str, tenant: str = Depends(current_tenant)) -> dict[str, Any]:
        """Status, queue position while queued, progress while running, outputs when done."""
        return job_view(own_job(tenant, job_id))

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str, tenant: str = Depends(current_tenant)) -> dict[str, Any]:
        """Cancel a queued job at once, a running one at its next step; an ended job stays as it is."""
        own_job(tenant, job_id)
        return job_view(client.cancel(job_id))

    # -- batches ---------------------------------------------------------------------------------
    def parse_batch(raw: bytes, ctype: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]], dict[str, Any]]:
        """(numbered items, per-line errors, batch options) from a JSON or JSONL body."""
        items: list[tuple[int, Any]] = []
        errors: list[dict[str, Any]] = []
        if ctype in _JSONL_TYPES:
            for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append((lineno, json.loads(line)))
                except ValueError as e:
                    errors.append({"line": lineno, "custom_id": None, "code": "invalid_json", "message": str(e)})
            if len(items) + len(errors) > MAX_BATCH_ITEMS:
                raise ApiError(422, "invalid_request", f"a batch holds at most {MAX_BATCH_ITEMS} lines")
            return items, errors, {}
        if ctype == "application/json":
            try:
                body = BatchCreate.model_validate_json(raw)
            except ValidationError as e:
                bad = invalid_from(e)
                raise ApiError(422, "invalid_request", f"batch body: {bad.message.removeprefix('invalid request: ')}",
                               errors=bad.errors) from None
            return list(enumerate(body.requests, 1)), errors, {
                "webhook": body.webhook, "webhook_events_filter": body.webhook_events_filter, "meta": body.metadata}
        raise ApiError(415, "unsupported_media_type", "send a batch as application/json ({\"requests\": [...]}) or "
                       "application/jsonl (one request per line)")

    def submit_batch(tenant: str, raw: bytes, ctype: str) -> dict[str, Any]:
        items, errors, options = parse_batch(raw, ctype)
        good: list[tuple[int, RenderRequest]] = []
        seen: set[str] = set()
        for line, item in items:
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            try:
                if not isinstance(item, dict):
                    raise InvalidRequest("each item must be a JSON object (a render request)")
                if options.get("webhook") and "webhook" not in item:
                    item = {**item, "webhook": options["webhook"],
                            "webhook_events_filter": options["webhook_events_filter"]}
                req = RenderRequest.parse(item)
                check_webhook(req)
            except InvalidRequest as e:
                errors.append({"line": line, "custom_id": custom_id if isinstance(custom_id, str) else None,
                               "code": e.code, "message": e.message, "errors": e.errors})
                continue
            if req.custom_id is not None and req.custom_id in seen:
                errors.append({"line": line, "custom_id": req.custom_id, "code": "duplicate_custom_id",
                               "message": f"custom_id {req.custom_id!r} is used by an earlier line; results "
                               "are joined on custom_id, so each must be unique in a batch"})
                continue
            if req.custom_id is not None:
                seen.add(req.custom_id)
            good.append((line, req))
        if not good:
            errors.sort(key=lambda x: x["line"])
            raise ApiError(422, "invalid_request", "the batch holds no valid request" +
                           (f"; line {errors[0]['line']}: {errors[0]['message']}" if errors else " (it is empty)"),
                           errors=errors)
        check_capacity(tenant, len(good))
        sub = client.submit_batch([r for _, r in good], tenant=tenant, meta=options.get("meta"))
        for index, e in sub.errors:
            line, req = good[index]
            errors.append({"line": line, "custom_id": req.custom_id, "code": e.code, "message": e.message,
                           "errors": e.errors})
        info = client.store.batch_info(sub.batch_id)
        return {**info, "accepted": len(sub.job_ids), "rejected": len(errors),
                "errors": sorted(errors, key=lambda x: x["line"])}

    @app.post("/v1/batches", status_code=201, tags=["batches"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": BatchCreate.model_json_schema()},
        "application/jsonl": {"schema": {"type": "string", "description": "one request per line, with custom_id"}}}}})
    async def create_batch(request: Request, tenant: str = Depends(current_tenant)) -> dict[str, Any]:
        """A batch from a JSON list or a JSONL upload; bad items are reported by line, the valid ones run."""
        raw = await request.body()
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        return await run_in_threadpool(submit_batch, tenant, raw, ctype)

    @app.get("/v1/batches/{batch_id}", tags=["batches"])
    def get_batch(batch_id: str, tenant: str = Depends(current_tenant)) -> dict[str, Any]:
        """Status and counts: total, succeeded, failed, blocked, canceled."""
        return own_batch(tenant, batch_id)

    @app.get("/v1/batches/{batch_id}/results", tags=["batches"], response_class=PlainTextResponse,
             responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}})
    def batch_results(batch_id: str, tenant: str = Depends(current_tenant)) -> PlainTextResponse:
        """JSONL, one line per job, joined on ``custom_id``."""
        own_batch(tenant, batch_id)
        lines = []
        for rec in client.batch_results(batch_id):
            view = rec.to_dict()
            lines.append(json.dumps({"custom_id": rec.custom_id, "job_id": rec.job_id, "status": rec.status.value,
                                     "outputs": view.get("outputs", []), "error": rec.error}))
        return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""), media_type="application/jsonl")

    @app.post("/v1/batches/{batch_id}/cancel", tags=["batches"])
    def cancel_batch(batch_id: str, tenant: str = Depends(current_tenant)) -> dict[str, Any]:
        """Cancel every job of the batch that has not ended."""
        own_batch(tenant, batch_id)
        return client.cancel_batch(batch_id)

    # -- deliveries ------------------------------------------------------------------------------
    @app.get("/v1/deliveries", tags=["webhooks"])
    def deliveries(job_id: str | None = None, tenant: str = Depends(current_tenant)) -> dict[str, Any]:
        """This tenant's webhook events and their delivery attempts (newest first)."""
        from webhooks.store import DeliveryStore

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
