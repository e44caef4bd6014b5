"""``/v1/batches``: submit (JSON or JSONL), list, read, collect results, cancel, and the gallery."""
from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse

from producer.api.deps import (Cursor, ServicesDep, Services, SignedOrTenant, Tenant, encode_cursor, own_batch,
                               request_base)
from producer.api.models import Batch, BatchPage, BatchSubmitted
from producer import openai_batches
from producer.gallery import render_sheet
from producer.submit import BatchCreate, submit_batch_body

router = APIRouter(prefix="/v1/batches", tags=["batches"])
_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": BatchCreate.model_json_schema(),
                         "example": BatchCreate.model_config["json_schema_extra"]["examples"][0]},
    "application/jsonl": {"schema": {"type": "string", "description": "one request per line, with custom_id"},
                          "example": '{"prompt": "a red bicycle", "custom_id": "sku-1"}\n'}}}}


def _batch(svc: Services, info: dict[str, Any], request: Request) -> dict[str, Any]:
    """The native batch, plus OpenAI's Batch fields for batches made from an ``input_file_id``."""
    links = svc.client.links
    view = openai_batches.view(svc.client, info, request_base(request))
    return {**view, "meta": {} if "object" in view else info["meta"],
            "gallery_url": links.signed(links.gallery_path(info["id"]), request_base(request))[0]}


@router.post("", status_code=201, openapi_extra=_BODY)
async def create_batch(request: Request, svc: ServicesDep, tenant: Tenant) -> BatchSubmitted:
    """A batch from a JSON list or a JSONL upload; bad items are reported by line, the valid ones run."""
    raw = await request.body()
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "application/json" and _is_openai(raw):  # OpenAI's shape: {input_file_id, endpoint, ...}
        request.state.openai = True  # errors in OpenAI's shape too
        info, errors = await run_in_threadpool(openai_batches.create, svc.client, tenant, raw)
        return BatchSubmitted.model_validate({**_batch(svc, info, request), "accepted": info["total"],
                                              "rejected": len(errors), "errors": errors})
    result = await run_in_threadpool(submit_batch_body, svc.client, tenant, raw, ctype)
    return BatchSubmitted.model_validate(_batch(svc, result, request))


def _is_openai(raw: bytes) -> bool:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and "input_file_id" in body


@router.get("")
def list_batches(request: Request, svc: ServicesDep, tenant: Tenant, after: Cursor,
                 created_after: Annotated[float | None, Query(ge=0, le=1e10, description="Unix time.")] = None,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> BatchPage:
    """This tenant's batches, newest first, a page at a time (follow ``next_cursor``)."""
    infos, cursor = svc.client.list_batches(tenant, created_after=created_after, limit=limit, after=after)
    data = [Batch.model_validate(_batch(svc, i, request)) for i in infos]
    return BatchPage(data=data, next_cursor=encode_cursor(cursor), has_more=cursor is not None,
                     first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


@router.get("/{batch_id}")
def get_batch(batch_id: str, request: Request, svc: ServicesDep, tenant: Tenant) -> Batch:
    """Status and counts: total, succeeded, failed, blocked, canceled; a signed link to its gallery."""
    return Batch.model_validate(_batch(svc, own_batch(svc, tenant, batch_id), request))


@router.get("/{batch_id}/results", response_class=PlainTextResponse,
            responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}})
def batch_results(batch_id: str, request: Request, svc: ServicesDep, tenant: Tenant) -> PlainTextResponse:
    """JSONL, one line per job, joined on ``custom_id``; outputs carry fresh links."""
    own_batch(svc, tenant, batch_id)
    base, lines = request_base(request), []
    for rec in svc.client.batch_results(batch_id):
        view = svc.client.view(rec, base)
        lines.append(json.dumps({"custom_id": rec.custom_id, "job_id": rec.job_id, "status": rec.status.value,
                                 "outputs": view.get("outputs", []), "error": rec.error}))
    return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""), media_type="application/jsonl")


@router.post("/{batch_id}/cancel")
def cancel_batch(batch_id: str, request: Request, svc: ServicesDep, tenant: Tenant) -> Batch:
    """Cancel every job of the batch that has not ended."""
    info = own_batch(svc, tenant, batch_id)
    if "openai" in (info.get("meta") or {}):
        return Batch.model_validate(_batch(svc, openai_batches.cancel(svc.client, batch_id), request))
    return Batch.model_validate(_batch(svc, svc.client.cancel_batch(batch_id), request))


@router.get("/{batch_id}/gallery", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
def gallery(batch_id: str, request: Request, svc: ServicesDep, who: SignedOrTenant) -> HTMLResponse:
    """A contact sheet of the batch: thumbnails, prompt, seed, size, flags, C2PA state, links to the
    full images. Open the batch's ``gallery_url`` (signed) in a browser; the API key works too."""
    info = own_batch(svc, who, batch_id)
    links, base = svc.client.links, request_base(request)

    def thumb(rec, image):
        return links.signed(links.output_path(rec.job_id, image.index, True), base)[0] if image.thumbnail_key else None

    def full(rec, image):
        return links.signed(links.output_path(rec.job_id, image.index), base)[0]

    html = render_sheet(info, svc.client.batch_results(batch_id), thumb, full)
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                       "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
                                       "script-src 'unsafe-inline'"})
