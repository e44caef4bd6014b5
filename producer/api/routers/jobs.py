"""``/v1/jobs``: submit, list, read, cancel and delete jobs."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from jobs.status import JobStatus
from jobs.schemas import RenderRequest
from jobs.store import JobRecord
from producer.api.deps import (Cursor, ServicesDep, Services, Tenant, encode_cursor, own_batch, own_job,
                               request_base, wait_for_end)
from producer.api.errors import ApiError
from producer.api.models import Deleted, Job, JobPage, Lineage
from producer.refine import RefineRequest, lineage, refine_once
from producer.submit import submit_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
#: Longest ``Prefer: wait=N`` honoured, in seconds.
MAX_WAIT_S = 60
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")
_EXAMPLES = {
    "product": {"summary": "Two product shots", "value": RenderRequest.model_config["json_schema_extra"]["examples"][0]},
    "webhook": {"summary": "With a webhook", "value": {"prompt": "a lighthouse at dusk", "width": 768, "height": 512,
                                                        "webhook": "https://hooks.example.com/batchrender"}},
}


def _view(svc: Services, rec: JobRecord, request: Request) -> Job:
    return Job.model_validate(svc.client.view(rec, request_base(request)))


def _answer(svc: Services, rec: JobRecord, request: Request, headers: dict[str, str]) -> Job:
    """The job, or ``moderation_blocked`` (422) when the content policy refused it."""
    if rec.status is JobStatus.BLOCKED:
        error = rec.error or {}
        moderation = (rec.result.moderation if rec.result else None) or {}
        raise ApiError(422, "moderation_blocked", error.get("message") or "blocked by the content policy",
                       headers=headers, job_id=rec.job_id,
                       stage=error.get("stage") or moderation.get("blocking_stage"),
                       categories=error.get("categories") or moderation.get("categories") or [])
    return _view(svc, rec, request)


@router.post("", status_code=201, responses={200: {"model": Job, "description": (
    "An earlier request with the same Idempotency-Key created this job (header Idempotent-Replayed), or "
    "cache 'reuse' found an earlier job of the same content (header Batchrender-Reused: its id): nothing "
    "was queued.")}})
async def create_job(body: Annotated[RenderRequest, Body(openapi_examples=_EXAMPLES)], request: Request, response: Response, svc: ServicesDep, tenant: Tenant,
               idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
               prefer: Annotated[str | None, Header(max_length=1024)] = None) -> Job:
    """Queue a render. ``Idempotency-Key`` makes retries safe; ``Prefer: wait=N`` waits up to N s.

    A prompt the content policy refuses is recorded as a ``blocked`` job and answered with 422
    ``moderation_blocked`` (stage and categories), never queued. With ``cache: "reuse"`` (and a
    seed), a job of this tenant with the same content that succeeded or is still queued or running
    is the answer: 200, header ``Batchrender-Reused: <its id>``, nothing rendered.
    """
    rec, replayed, reused = await run_in_threadpool(submit_job, svc.client, svc.idempotency, tenant, body,
                                                    idempotency_key)
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        return await run_in_threadpool(_answer, svc, rec, request, {"Idempotent-Replayed": "true"})
    if reused:
        response.status_code = 200
        response.headers["Batchrender-Reused"] = rec.job_id
    rec = await _prefer_wait(svc, rec, prefer, response)
    return await run_in_threadpool(_answer, svc, rec, request, {})


async def _prefer_wait(svc: Services, rec: JobRecord, prefer: str | None, response: Response) -> JobRecord:
    """``Prefer: wait=N``: the job once it ended, or as it is after N s (at most MAX_WAIT_S)."""
    wait = _PREFER_WAIT.search(prefer or "")
    if wait and not rec.status.terminal:
        seconds = min(MAX_WAIT_S, int(wait.group(1)[:4]))
        response.headers["Preference-Applied"] = f"wait={seconds}"
        rec = await wait_for_end(svc, rec.job_id, seconds)
    return rec


@router.get("")
def list_jobs(request: Request, svc: ServicesDep, tenant: Tenant, after: Cursor,
              status: JobStatus | None = None, batch_id: Annotated[str | None, Query(max_length=100)] = None,
              created_after: Annotated[float | None, Query(ge=0, le=1e10, description="Unix time.")] = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobPage:
    """This tenant's jobs, newest first, a page at a time; filter by status, batch or creation time.

    Follow ``next_cursor`` (as ``?after=``) until it is null: jobs created meanwhile never shift
    a page, so a walk sees every older job exactly once.
    """
    if batch_id is not None:
        own_batch(svc, tenant, batch_id)
    records, cursor = svc.client.list_jobs(tenant, status=status, batch_id=batch_id, created_after=created_after,
                                           limit=limit, after=after)
    data = [_view(svc, r, request) for r in records]
    return JobPage(data=data, next_cursor=encode_cursor(cursor), has_more=cursor is not None,
                   first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


@router.get("/{job_id}")
def get_job(job_id: str, request: Request, svc: ServicesDep, tenant: Tenant) -> Job:
    """Status, queue position while queued, progress while running, outputs (with fresh links) when done."""
    return _view(svc, own_job(svc, tenant, job_id), request)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, request: Request, svc: ServicesDep, tenant: Tenant) -> Job:
    """Cancel a queued job at once, a running one at its next step; an ended job stays as it is."""
    own_job(svc, tenant, job_id)
    return _view(svc, svc.client.cancel(job_id), request)


@router.post("/{job_id}/refine", status_code=201, responses={200: {"model": Job, "description": (
    "An earlier request with the same Idempotency-Key created this job (header Idempotent-Replayed).")}})
async def refine_job(job_id: str, body: RefineRequest, request: Request, response: Response, svc: ServicesDep,
                     tenant: Tenant, idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
                     prefer: Annotated[str | None, Header(max_length=1024)] = None) -> Job:
    """Refine one image of a succeeded job with a new prompt: a new job, image-to-image from that
    image with its seed and the parent's model and size (``steps``, ``strength`` may change).

    409 ``parent_not_succeeded`` unless the job succeeded; 422 naming ``image_index`` when it is
    out of range; a prompt the content policy refuses is answered 422 ``moderation_blocked``. The
    new job's C2PA manifest lists the parent image as its ``parentOf`` ingredient.
    ``Idempotency-Key`` makes retries safe and ``Prefer: wait=N`` waits up to N s, as for ``POST /v1/jobs``.
    """
    own_job(svc, tenant, job_id)
    rec, replayed = await run_in_threadpool(refine_once, svc.client, svc.idempotency, job_id, body, tenant=tenant,
                                            idempotency_key=idempotency_key)
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if replayed:
        response.status_code = 200
        response.headers.update(headers)
    else:
        rec = await _prefer_wait(svc, rec, prefer, response)
    return await run_in_threadpool(_answer, svc, rec, request, headers)


@router.get("/{job_id}/lineage")
def job_lineage(job_id: str, request: Request, svc: ServicesDep, tenant: Tenant) -> Lineage:
    """The chain of refinements from its root (turn 0) to this job: id, status, turn, prompt and
    output URL of each."""
    own_job(svc, tenant, job_id)
    return Lineage.model_validate(lineage(svc.client, job_id, tenant=tenant, base=request_base(request)))


@router.delete("/{job_id}")
def delete_job(job_id: str, svc: ServicesDep, tenant: Tenant) -> Deleted:
    """Delete an ended job: its images, thumbnails, provenance entries and record. A queued or
    running job answers 409 ``job_not_ended``: cancel it first. Later reads answer 404 ``deleted``."""
    own_job(svc, tenant, job_id)
    svc.client.delete(job_id)
    return Deleted(id=job_id)
