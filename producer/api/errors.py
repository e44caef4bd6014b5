"""One error model for every answer that is not 2xx: ``{"error": {"code", "message", ...}}``.

Domain errors (``jobs.errors``) map to HTTP statuses by class, so route functions just let them
rise; ``ApiError`` is for the few errors only HTTP has (authentication, rate limits).
"""
from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.errors import (BatchRenderError, IdempotencyConflict, IdempotencyInProgress, JobNotEnded, JobNotFound,
                         ParentNotSucceeded, QuotaExceeded, StorageQuotaExceeded, TransientError,
                         UnsupportedMediaType)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"code", "message", **extra}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers or {}, extra


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"code": "invalid_request", "message": "steps: 900 steps is out of range; allowed 1–150",
         "errors": [{"field": "steps", "message": "900 steps is out of range; allowed 1–150"}]}]})
    code: str
    message: str
    errors: list[dict[str, Any]] | None = Field(None, description=(
        "What was wrong, item by item: {field, message} for a request; for a batch also line, "
        "custom_id and code."))


class ErrorBody(BaseModel):
    error: ErrorDetail


def _described(text: str) -> dict[str, Any]:
    # JSON whatever the route's own media type (HTML, JSONL, images): errors are always ErrorBody.
    return {"description": text, "model": ErrorBody,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}


#: The error answers every operation may give, for the OpenAPI document.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _described("Bad request"), 401: _described("No or unknown API key"),
    403: _described("Expired or bad signed link"), 404: _described("Not found or deleted"), 409: _described("Conflict"),
    413: _described("Body too large"), 415: _described("Unsupported media type"),
    422: _described("Invalid or blocked"), 429: _described("Rate limited, too many queued jobs, or files over quota"),
    503: _described("Redis or the broker is unavailable; retry after Retry-After seconds"),
}


#: Routes of the OpenAI-compatible surface answer errors in OpenAI's shape.
OPENAI_PREFIXES = ("/v1/images/", "/v1/models", "/v1/files")
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 415: "invalid_request_error", 429: "rate_limit_error"}


def is_openai(request: Request | None) -> bool:
    """On an OpenAI-compatible route, or a shared one (``/v1/batches``) that saw an OpenAI body."""
    if request is None:
        return False
    return request.url.path.startswith(OPENAI_PREFIXES) or bool(getattr(request.state, "openai", False))


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   request: Request | None = None, **extra: Any) -> JSONResponse:
    """Our ``{"error": {"code", "message", ...}}``, or on OpenAI-compatible routes OpenAI's
    ``{"error": {"message", "type", "param", "code"}}`` (422 becomes 400 there, as OpenAI answers)."""
    if is_openai(request):
        status = 400 if status == 422 else status
        errors = extra.get("errors") or []
        param = errors[0].get("field") if errors and isinstance(errors[0], dict) else None
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        headers = {**(headers or {}), **({"x-should-retry": "false"} if status >= 500 else {})}
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def _status_of(e: BatchRenderError) -> tuple[int, dict[str, str]]:
    if isinstance(e, JobNotFound):
        return 404, {}
    if isinstance(e, IdempotencyInProgress):
        return 409, {"Retry-After": "1"}
    if isinstance(e, (JobNotEnded, IdempotencyConflict, ParentNotSucceeded)):
        return 409, {}
    if isinstance(e, QuotaExceeded):
        return 429, {"Retry-After": "5"}
    if isinstance(e, StorageQuotaExceeded):
        # A quota, as OpenAI answers one (429), but retrying cannot help until files are deleted:
        # no Retry-After, and the OpenAI SDKs' automatic retries are told not to.
        return 429, {"x-should-retry": "false"}
    if isinstance(e, UnsupportedMediaType):
        return 415, {}
    if isinstance(e, TransientError):
        # ModerationUnavailable says when the classifier service's circuit lets a call through.
        return 503, {"Retry-After": str(int(e.details.get("retry_after_s") or 5))}
    return 422, {}


def _malformed_json(err: dict[str, Any], body: Any) -> dict[str, Any]:
    """A body the JSON parser refused: FastAPI puts the character offset where a field name goes
    (``loc == ("body", 18)``); say it is malformed JSON and where, as line and column."""
    pos = err["loc"][1] if len(err["loc"]) > 1 and isinstance(err["loc"][1], int) else None
    reason = str((err.get("ctx") or {}).get("error") or "not valid JSON")
    where = ""
    if pos is not None:
        text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body or "")
        line, column = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        where = f" at line {line}, column {column}"
    return {"field": "body", "message": f"malformed JSON: {reason}{where}"}


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into ``ErrorBody``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return error_response(e.status, e.code, e.message, e.headers, request, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errors = [_malformed_json(err, e.body) if err.get("type") == "json_invalid" else
                  {"field": ".".join(str(p) for p in err["loc"][1:]) or "body",
                   "message": str(err["msg"]).removeprefix("Value error, ")} for err in e.errors()]
        return error_response(422, "invalid_request", "; ".join(f"{x['field']}: {x['message']}" for x in errors),
                              None, request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(e.status_code, code, str(e.detail), getattr(e, "headers", None), request)

    @app.exception_handler(BatchRenderError)
    async def _domain(request: Request, e: BatchRenderError):
        status, headers = _status_of(e)
        extra = {"errors": e.details["errors"]} if e.details.get("errors") else {}
        if e.public_message is not None:  # its message names the deployment's insides: the log has it
            log.warning("%s %s answered %s %s: %s", request.method, request.url.path, status, e.code, e.message)
            return error_response(status, e.code, e.public_message, headers or None, request)
        return error_response(status, e.code, e.message, headers or None, request, **extra)

    @app.exception_handler(redis.RedisError)
    async def _redis(request: Request, e: redis.RedisError):
        return error_response(503, "broker_unavailable", "the job store is unavailable; retry shortly",
                              {"Retry-After": "5"}, request)
