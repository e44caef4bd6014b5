"""``/v1/files`` (OpenAI-compatible): upload a batch's JSONL or a campaign's catalog, read a
finished batch's output and error files. Files belong to one tenant, within its quota, and are
deleted ``BATCHRENDER_RETENTION_S`` after their creation (storage/files.py); errors come in OpenAI's shape."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from producer.api.deps import ServicesDep, Tenant
from producer.campaigns import expect_plan
from producer.files import FileNotFound, Files

router = APIRouter(prefix="/v1/files", tags=["openai-compatible"])


@router.post("")
async def create_file(svc: ServicesDep, tenant: Tenant, file: Annotated[UploadFile, File()],
                      purpose: Annotated[str, Form(max_length=40)], after: BackgroundTasks) -> dict:
    """Upload a JSONL file of requests (``purpose=batch``) or a campaign's CSV or JSONL catalog
    (``purpose=campaign``), within the API's body limit and the tenant's file quota (429
    ``file_quota_exceeded`` naming it and the usage)."""
    data = await file.read()
    files = Files(svc.client)
    rec = await run_in_threadpool(files.create, tenant, file.filename or "upload.jsonl", purpose, data)
    if purpose == "campaign":  # a plan of it is likely next: its workers start after this response
        after.add_task(expect_plan, svc.client, data.count(b"\n"))
    return files.to_openai(rec)


@router.get("/{file_id}")
def get_file(file_id: str, svc: ServicesDep, tenant: Tenant) -> dict:
    files = Files(svc.client)
    return files.to_openai(files.get(tenant, file_id))


@router.get("/{file_id}/content", response_class=Response,
            responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}},
                                         "text/csv": {"schema": {"type": "string"}}}}})
def file_content(file_id: str, svc: ServicesDep, tenant: Tenant) -> Response:
    rec = Files(svc.client).get(tenant, file_id)
    try:  # in chunks, from local disk or S3: a slow reader holds one chunk, not the file
        size, chunks = svc.client.storage.stream(rec.storage_key)
    except KeyError:
        raise FileNotFound(f"the content of file {rec.id} is gone") from None
    return StreamingResponse(chunks, media_type=rec.content_type, headers={"Content-Length": str(size)})


@router.delete("/{file_id}")
def delete_file(file_id: str, svc: ServicesDep, tenant: Tenant) -> dict:
    return Files(svc.client).delete(tenant, file_id)
